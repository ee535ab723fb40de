"""One FlashVDM geometry-decoder call of Hunyuan3D-2, ours vs hy3dgen 2.0.2's, on the CPU in float32.

The official ShapeVAE's geometry decoder with random weights at the released width (1024, 16
heads, 512 latents as mini, so FlashVDM keeps 256 keys), saved in the official VAE-only layout and
loaded into ours through our loader. One call of ``--points`` query points (8000, upstream's chunk)
as one FlashVDM bucket: each side picks its keys from every 50th query and attends to them.
Calls alternate between the two sides ``--repeats`` times, so other load on the machine hits both
alike; the table gives the median CPU time a point, the throughput against the call's
multiply-adds and the largest difference of the logits. Ours computes the keys and values of the
decoder tokens once per shape (outside the timed call); hy3dgen computes them in every call.

    python benchmarks/h2_decoder_call.py [--points 8000] [--repeats 5] [--threads 1] [--profile]

Needs the oracle: pip install --no-deps "hy3dgen==2.0.2" (and the test extra)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hy3dgen_oracle import official_shape_vae, shapegen_module  # noqa: E402

from backend.pipelines.hunyuan3d_v2.vae import KeySelection, ShapeVAEConfig, load_shape_vae  # noqa: E402
from backend.pipelines.hunyuan3d_v2.volume import FINE_STRIDE  # noqa: E402

RELEASED = {"num_latents": 512, "embed_dim": 64, "width": 1024, "heads": 16, "num_decoder_layers": 1, "num_freqs": 8,
            "include_pi": False, "qkv_bias": False, "qk_norm": True, "scale_factor": 1.0188137142395404}


def multiply_adds_per_point(config: ShapeVAEConfig, keys: int) -> int:
    """The geometry decoder's multiply-adds for one query point attending to ``keys`` keys."""
    width = config.width // config.geo_decoder_downsample_ratio
    fourier = 3 * (2 * config.num_freqs + 1)
    return (fourier * width  # query_proj
            + 2 * width * width  # c_q and the attention's c_proj
            + 2 * keys * width  # q.k and the weighted sum of values
            + 2 * config.geo_decoder_mlp_expand_ratio * width * width  # the MLP
            + width)  # output_proj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=8000, help="query points in the call (upstream's chunk: 8000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--profile", action="store_true", help="also print where one of our calls spends its time, per operator")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    official = official_shape_vae(RELEASED, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.fp16.safetensors"
        save_file({key: tensor.contiguous() for key, tensor in official.state_dict().items()}, path)
        config = ShapeVAEConfig.from_params(RELEASED)
        ours = load_shape_vae(path, config, combined=False)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, config.num_latents, config.width, generator=generator)
    # A compact bucket of points, as FlashVDM groups them.
    points = torch.rand(1, args.points, 3, generator=generator) * 0.3 - 0.15
    processor = shapegen_module("models.autoencoders").FlashVDMVolumeDecoding("mean").processor
    official.geo_decoder.set_cross_attention_processor(processor)
    selection = KeySelection((args.points,), FINE_STRIDE, config.topk_keys, "mean")

    with torch.inference_mode():
        kv = ours.geo_decoder.prepare(tokens)

        def theirs() -> torch.Tensor:
            processor.topk = ([0], [args.points])  # one bucket; hy3dgen resets this after each call
            return official.geo_decoder(queries=points, latents=tokens)[0, :, 0]

        def mine() -> torch.Tensor:
            return ours.geo_decoder(points, kv, selection)[0]

        difference = float((mine() - theirs()).abs().max())
        times: dict[str, list[float]] = {"hy3dgen": [], "ours": []}
        for _ in range(args.repeats):
            for name, call in (("hy3dgen", theirs), ("ours", mine)):
                started = time.process_time()
                call()
                times[name].append(time.process_time() - started)

    macs = multiply_adds_per_point(config, config.topk_keys)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"geometry decoder: width {config.width}, {config.heads} heads, {config.num_latents} latents, FlashVDM keeps "
          f"{config.topk_keys} keys; {args.points} points a call; {macs / 1e6:.2f} M multiply-adds a point; float32")
    print(f"largest difference of the logits: {difference:.2e}\n")
    print("| decoder call | CPU us a point (median) | GFLOP/s (2 x multiply-adds) | relative |")
    print("|---|---|---|---|")
    base = statistics.median(times["hy3dgen"])
    for name in ("hy3dgen", "ours"):
        seconds = statistics.median(times[name])
        print(f"| {name} | {seconds / args.points * 1e6:.1f} | {2 * macs * args.points / seconds / 1e9:.1f} | {base / seconds:.2f}x |")
    if args.profile:
        with torch.inference_mode(), torch.profiler.profile() as profiler:
            mine()
        print()
        print(profiler.key_averages().table(sort_by="cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
