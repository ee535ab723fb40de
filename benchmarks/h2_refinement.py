"""Hunyuan3D-2 volume decoding: how much of it is the geometry decoder's calls, and how much the work around them.

One ShapeVAE of ours with weights drawn like a trained decoder's (``h2_random_weights.trained_like_vae``:
a smooth field, about 30% of the box inside) and unit-variance latents. For each decoder
('hierarchical', 'flashvdm') and refinement ('upstream': hy3dgen's region, one pass a level;
'adaptive': the surface followed pass after pass) it prints the points decoded, the passes and
calls, the decoding's time, and the part of it spent in the decoder's forward calls (timed by
forward hooks in a second run, with a synchronize before and after each call on a GPU). The rest
is the grids' bookkeeping between the calls (upsampling, the regions, the growth passes,
FlashVDM's buckets and the keys of groups larger than a call), which does not depend on the
decoder's size. A third run counts the torch operations the decoding dispatches, views aside:
those in the decoder's calls and those around them (each one kernel launch or more on a GPU),
and among the latter those whose output size depends on the data (nonzero, unique, masking,
reading a value to Python), each of which makes the host wait for a GPU. These counts are the same
on every device, so the CPU shows what the bookkeeping will cost where a launch, not a point, is
what costs.

The default decoder is tiny (width 16), so a point costs little, as on a GPU, and the bookkeeping
shows; ``--width 1024 --heads 16 --latents 3072`` is v2-0's. No hy3dgen needed.

On the CPU times are this process's CPU seconds (one torch thread by default, so they measure the
work even on a shared machine); on a GPU (``--device cuda``, float16) wall seconds after a
synchronize.

Run: python benchmarks/h2_refinement.py [--resolutions 256 384] [--width 16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from h2_random_weights import trained_like_vae  # noqa: E402

from backend.pipelines.hunyuan3d_v2.vae import ShapeVAE, ShapeVAEConfig  # noqa: E402
from backend.pipelines.hunyuan3d_v2.volume import DEFAULT_NUM_CHUNKS, decode_volume  # noqa: E402


class Clock:
    """CPU seconds of this process on the CPU; wall seconds after a synchronize on a GPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


class DecoderCallTime:
    """Seconds spent inside a module's forward calls, from a pre-hook and a hook."""

    def __init__(self, module: torch.nn.Module, clock: Clock):
        self.clock, self.seconds, self.started = clock, 0.0, 0.0
        self.handles = [module.register_forward_pre_hook(self.before), module.register_forward_hook(self.after)]

    def before(self, *_args) -> None:
        self.started = self.clock()

    def after(self, *_args) -> None:
        self.seconds += self.clock() - self.started

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# Operations whose output size, or a Python value, depends on the data: the host waits for the device.
HOST_WAITS = {"aten.nonzero.default", "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default",
              "aten.masked_select.default", "aten._local_scalar_dense.default"}


class OperationCount(TorchDispatchMode):
    """Torch operations dispatched (views aside), inside a module's forward calls and around them."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inside = self.around = self.waits = 0
        self.depth = 0
        self.handles = [module.register_forward_pre_hook(self.enter), module.register_forward_hook(self.leave)]

    def enter(self, *_args) -> None:
        self.depth += 1

    def leave(self, *_args) -> None:
        self.depth -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            if self.depth:
                self.inside += 1
            else:
                self.around += 1
                # Indexing with a boolean mask finds the mask's positions first.
                masked = func.name() == "aten::index.Tensor" and any(
                    isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1])
                self.waits += masked or str(func) in HOST_WAITS
        return func(*args, **(kwargs or {}))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 384], help="octree resolutions")
    parser.add_argument("--width", type=int, default=16, help="decoder width (the released models: 1024)")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--latents", type=int, default=64, help="latent tokens (512 as mini, 3072 as v2-0)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_NUM_CHUNKS, help="points per decoder call (8000 upstream)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.width % args.heads:
        parser.error(f"--width {args.width} must be a multiple of --heads {args.heads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    clock = Clock(args.device)

    config = ShapeVAEConfig(num_latents=args.latents, width=args.width, heads=args.heads, num_decoder_layers=4,
                            include_pi=False, qkv_bias=False, qk_norm=True)
    vae = ShapeVAE(config).eval()
    vae.load_state_dict(trained_like_vae(config, args.seed))
    vae.to(args.device, dtype)
    latents = torch.randn(1, args.latents, config.embed_dim, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.inference_mode():
        tokens = vae.latents_to_tokens(latents.to(args.device, dtype))
    decode_volume(vae, tokens, method="hierarchical", octree_resolution=64)  # warm-up: first calls, allocator

    unit = "GPU" if args.device == "cuda" else "CPU"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print(f"model: width {args.width}, heads {args.heads}, {args.latents} latents, {str(dtype).removeprefix('torch.')}, "
          f"{args.chunk_size} points per call; times in {'wall seconds' if args.device == 'cuda' else 'CPU seconds'}")
    print(f"\n| octree | decoder | refinement | points decoded | passes | calls | {unit} s | in decoder calls | around them "
          "| operations in calls | operations around them | of which the host waits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for resolution in args.resolutions:
        for method in ("hierarchical", "flashvdm"):
            for refinement in ("upstream", "adaptive"):
                def decode(m=method, f=refinement, r=resolution):
                    return decode_volume(vae, tokens, method=m, refinement=f, octree_resolution=r, num_chunks=args.chunk_size)

                started = clock()
                volume = decode()
                total = clock() - started
                calls = DecoderCallTime(vae.geo_decoder, clock)
                try:
                    decode()
                finally:
                    calls.remove()
                operations = OperationCount(vae.geo_decoder)
                try:
                    with operations:
                        decode()
                finally:
                    operations.remove()
                stats = volume.stats
                print(f"| {resolution} | {method} | {refinement} | {stats.points:,} | {stats.passes} | {stats.calls} | {total:.2f} | "
                      f"{calls.seconds:.2f} | {max(total - calls.seconds, 0.0):.2f} | {operations.inside:,} | {operations.around:,} "
                      f"| {operations.waits:,} |", flush=True)


if __name__ == "__main__":
    main()
