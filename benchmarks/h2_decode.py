"""Hunyuan3D-2 volume decoding: ours against hy3dgen 2.0.2's plain and FlashVDM decoders, on the CPU or a GPU.

One random ShapeVAE of the official class (the weights shaped like a trained decoder's field,
see tests/hy3dgen_oracle.py), saved in the official VAE-only layout and loaded into ours
through our loader; the same latents for both; float32; the official chunk size (8000).

For each octree resolution, ours with both refinements (upstream's region: the same points as
hy3dgen; adaptive: the surface followed pass after pass; the row marked default is what
``decode_volume`` picks on this device):
- hy3dgen FlashVDM ('mean' key selection) vs our 'flashvdm': CPU and wall times, points decoded,
  passes, host peak RSS growth, and the Hausdorff distance between our mesh and hy3dgen's;
- hy3dgen plain vs our 'hierarchical' (exact attention, so the plain decoder's mesh): the plain
  decoder evaluates all (R + 1)^3 points in equal chunks, so its time at R is its measured time
  per point at ``--plain-resolution`` (one full run) times (R + 1)^3; the Hausdorff distance
  between the plain and our hierarchical meshes is measured at that resolution.

Meshes are raw marching cubes (no clean-up, no decimation). hy3dgen's vertices are mapped with
the decoded grid's spacing (upstream divides by octree_resolution + 1, a shrink that would
otherwise dominate the distance). Needs the test-only oracle: pip install --no-deps hy3dgen==2.0.2

On a GPU (``--device cuda``, float16 by default as the pipelines run there), times are wall
seconds after a synchronize and the memory column is the growth of ``torch.cuda.max_memory_allocated``.

Run: python benchmarks/h2_decode.py [--resolutions 256 384] [--width 128] [--latents 512] [--threads 1]
     python benchmarks/h2_decode.py --device cuda --width 1024 --heads 16 --latents 3072   # the released size
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from hy3dgen_oracle import official_shape_vae, set_inside_share, shapegen_module  # noqa: E402

from backend.memory.stats import HostPeak, current_rss  # noqa: E402
from backend.pipelines.hunyuan3d_v2.vae import ShapeVAEConfig, load_shape_vae  # noqa: E402
from backend.pipelines.hunyuan3d_v2.volume import BOUND, DEFAULT_NUM_CHUNKS, Volume, decode_volume, volume_to_mesh  # noqa: E402


def timed(fn, device: str = "cpu"):
    """(result, cost in seconds, wall seconds, peak memory growth in bytes).

    On the CPU the cost is this process's CPU time: the machine is shared, and wall time measures
    the neighbours (with one thread, CPU time has no idle spinning in it either); the memory is
    the host's peak RSS. On a GPU the cost is the wall time after a synchronize, the memory the
    accelerator's peak allocation.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        wall = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - wall
        return result, wall, wall, max(torch.cuda.max_memory_allocated() - before, 0)
    before = current_rss()
    with HostPeak() as peak:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return result, cpu, wall, max(peak.peak - before, 0)


def official_vertices(grid: torch.Tensor, octree_resolution: int) -> np.ndarray:
    """hy3dgen's marching cubes on its grid, vertices re-mapped with the decoded grid's spacing."""
    extractor = shapegen_module("models.autoencoders").MCSurfaceExtractor()
    output = extractor(grid, mc_level=0.0, bounds=BOUND, octree_resolution=octree_resolution)[0]
    vertices = output.mesh_v[np.isfinite(output.mesh_v).all(axis=1)]
    return (vertices + BOUND) * (octree_resolution + 1) / (grid.shape[-1] - 1) - BOUND


def our_vertices(volume: Volume) -> np.ndarray:
    return volume_to_mesh(volume, max_faces=10**9).positions


def hausdorff_percent(a: np.ndarray, b: np.ndarray) -> float:
    distance = max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())
    return 100.0 * distance / np.linalg.norm(b.max(axis=0) - b.min(axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 384], help="octree resolutions to compare")
    parser.add_argument("--plain-resolution", type=int, default=128, help="where the plain decoder runs in full")
    parser.add_argument("--width", type=int, default=128, help="decoder width (the released models: 1024)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--latents", type=int, default=512, help="latent tokens (512 as mini, 3072 as v2-0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; with one, CPU time measures the work even on a shared machine")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=["float32", "float16"], help="default: float32 on the CPU, float16 on a GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    dtype = getattr(torch, args.dtype or ("float16" if device == "cuda" else "float32"))
    unit, memory_name = ("GPU", "GPU peak") if device == "cuda" else ("CPU", "host peak")
    logging.getLogger("hy3dgen.shapgen").setLevel(logging.WARNING)

    params = {"num_latents": args.latents, "embed_dim": 64, "width": args.width, "heads": args.heads, "num_decoder_layers": 4,
              "num_freqs": 8, "include_pi": False, "qkv_bias": False, "qk_norm": True, "scale_factor": 1.0188137142395404}
    latents = torch.randn(1, args.latents, 64, generator=torch.Generator().manual_seed(args.seed + 1))
    official = official_shape_vae(params, seed=args.seed)
    set_inside_share(official, latents)
    autoencoders = shapegen_module("models.autoencoders")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.fp16.safetensors"
        save_file({key: tensor.contiguous() for key, tensor in official.state_dict().items()}, path)
        ours = load_shape_vae(path, ShapeVAEConfig.from_params(params), combined=False).to(device, dtype)
        official.to(device, dtype)
        latents = latents.to(device, dtype)
        with torch.inference_mode():
            official_tokens = official(1.0 / official.scale_factor * latents)
            our_tokens = ours.latents_to_tokens(latents)

        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""))
        print(f"model: width {args.width}, heads {args.heads}, {args.latents} latents (FlashVDM keeps "
              f"{ours.config.topk_keys}), {str(dtype).removeprefix('torch.')}, {DEFAULT_NUM_CHUNKS} points per call")

        plain_r = args.plain_resolution
        reference, plain_cpu, plain_wall, plain_peak = timed(lambda: autoencoders.VanillaVolumeDecoder()(
            official_tokens, official.geo_decoder, bounds=BOUND, num_chunks=DEFAULT_NUM_CHUNKS, octree_resolution=plain_r,
            enable_pbar=False), device)
        per_point = plain_cpu / (plain_r + 1) ** 3
        hierarchical, cpu, wall, _ = timed(lambda: decode_volume(ours, our_tokens, method="hierarchical", octree_resolution=plain_r),
                                        device)
        plain_distance = hausdorff_percent(our_vertices(hierarchical), official_vertices(reference, plain_r))
        print(f"\nhy3dgen plain at octree {plain_r}: {plain_cpu:.1f} {unit} s ({plain_wall:.1f} s wall) for {(plain_r + 1) ** 3:,} points "
              f"({per_point * 1e6:.1f} {unit} us a point, {memory_name} +{plain_peak / 2**20:.0f} MiB); ours hierarchical "
              f"{cpu:.1f} {unit} s ({wall:.1f} s wall) for {hierarchical.stats.points:,} points; Hausdorff between the meshes "
              f"{plain_distance:.3f} % of the diagonal")

        mib = 2**20
        print(f"\n| octree | decoder | points decoded (finest level) | passes | {unit} s | wall s | {memory_name} | speed-up | "
              "Hausdorff (% diag) |")
        print("|---|---|---|---|---|---|---|---|---|")
        default = "upstream" if device != "cpu" else "adaptive"  # decode_volume's default refinement here
        for resolution in args.resolutions:
            theirs, their_cpu, their_wall, their_peak = timed(lambda r=resolution: autoencoders.FlashVDMVolumeDecoding("mean")(
                official_tokens, official.geo_decoder, bounds=BOUND, num_chunks=DEFAULT_NUM_CHUNKS, mc_level=0.0,
                octree_resolution=r, enable_pbar=False), device)
            their_mesh = official_vertices(theirs, resolution)
            their_finest = int(torch.isfinite(theirs).sum())
            plain_estimate = per_point * (resolution + 1) ** 3
            rows = []
            for method in ("flashvdm", "hierarchical"):
                for refinement in ("upstream", "adaptive"):
                    volume, cost, wall, peak = timed(lambda r=resolution, m=method, f=refinement: decode_volume(
                        ours, our_tokens, method=m, octree_resolution=r, refinement=f), device)
                    if method == "flashvdm":
                        baseline, distance = their_cpu, f"{hausdorff_percent(our_vertices(volume), their_mesh):.3f}"
                    else:
                        baseline, distance = plain_estimate, f"(at {plain_r}: {plain_distance:.3f})"
                    name = f"ours {method}, {refinement} refinement" + (" (default)" if refinement == default else "")
                    rows.append(f"| {resolution} | {name} | {volume.stats.points:,} ({volume.stats.levels[-1][1]:,}) | "
                                f"{volume.stats.passes} | {cost:.1f} | {wall:.1f} | +{peak / mib:.0f} MiB | "
                                f"{baseline / cost:.2f}x | {distance} |")
                    if method == "flashvdm" and refinement == "upstream":
                        their_points = volume.stats.points - volume.stats.levels[-1][1] + their_finest
            print(f"| {resolution} | hy3dgen FlashVDM | {their_points:,} ({their_finest:,}) | - | {their_cpu:.1f} | "
                  f"{their_wall:.1f} | +{their_peak / mib:.0f} MiB | 1.00x | - |")
            print(*rows[:2], sep="\n")
            print(f"| {resolution} | hy3dgen plain ({per_point * 1e6:.1f} {unit} us a point) | {(resolution + 1) ** 3:,} | - | "
                  f"{plain_estimate:.0f} | - | - | 1.00x | - |")
            print(*rows[2:], sep="\n", flush=True)

if __name__ == "__main__":
    main()
