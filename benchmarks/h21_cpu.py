"""Hunyuan3D-2.1 on the CPU at full size (float32, ``stage`` mode): time and peak RSS per stage.

Writes a full-size random ``hunyuan3d-dit-v2-1/`` folder in the official layout
(benchmarks/h21_random_weights.py, 7.37 GB) unless ``--dir`` already holds one, then runs one
``hunyuan3d-2.1`` job in a fresh process through the job engine, as ``python -m backend generate
--model hunyuan3d-2.1 --memory stage`` runs it, on an RGBA picture. It prints each stage's
process CPU seconds, wall seconds and peak RSS (the kernel's high-water mark, reset at each
stage), the time of each DiT call (a guided step: batch 2 of 4096 latents), the DiT's float32
size and the goal: stage-mode peak RSS <= the DiT's float32 size + 2 GB.

The official defaults (50 steps, octree 384) would take hours on 2 cores, so the defaults here
are 3 steps (two DiT calls: with the flow-matching schedule the last step has zero length and
is skipped; the first call also pays for loading the DiT, the second is a clean step time) and
octree 64 with the plain decoder (2.1's default decoder).

    python benchmarks/h21_cpu.py --dir /tmp/h21        # needs about 15 GB of free RAM and 7.4 GB of disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from h2_cpu import StageClock, make_engine, print_stage_table, run_job, run_measurement  # noqa: E402

GB = 1e9
MODEL = "hunyuan3d-2.1"
GUIDANCE = 5.0  # upstream's default
STAGES = ("load", "background", "condition", "sampling", "decoding", "mesh")


def dit_float32_bytes(checkpoint: Path) -> int:
    """4 bytes per parameter of the checkpoint's ``model`` entry, read through its memory map."""
    import torch

    state = torch.load(checkpoint, mmap=True, weights_only=True, map_location="cpu")["model"]
    return 4 * sum(tensor.numel() for tensor in state.values())


def measure(args: argparse.Namespace) -> None:
    import torch

    clock = StageClock()
    params = {"steps": args.steps, "guidance": GUIDANCE, "seed": args.seed, "octree_resolution": args.octree_resolution, "chunk_size": args.chunk_size,
              "volume_decoder": args.volume_decoder, "background_method": "alpha"}
    clock.mark("load")  # runtime, weights check, registration; each part loads inside its stage
    engine = make_engine("cpu", "stage", args.dir)
    mesh, header, steps = run_job(engine, MODEL, args.image, params, clock)
    print(json.dumps({"stages": clock.stages, "threads": torch.get_num_threads(), "steps": steps["sampling"],
                      "vertices": mesh.vertex_count, "faces": mesh.face_count,
                      "timings": header["timings"]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="weights folder (written with random full-size weights if it lacks them; "
                        "default: a temporary folder, deleted afterwards)")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "snowman.png", help="an RGBA picture (default: examples/snowman.png)")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps (default 3: two DiT calls; upstream's default is 50)")
    parser.add_argument("--octree-resolution", type=int, default=64, help="grid cells per axis (default 64; upstream's is 384)")
    parser.add_argument("--volume-decoder", default="plain", choices=["plain", "hierarchical", "flashvdm"], help="default plain, as upstream for 2.1")
    parser.add_argument("--chunk-size", type=int, default=8000, help="grid points per decoder call (default 8000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # the fresh process's half
    args = parser.parse_args()
    if args.steps < 2 or args.octree_resolution < 16 or args.chunk_size < 1:
        parser.error("--steps must be at least 2 (the last step has zero length), --octree-resolution at least 16, --chunk-size positive")
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if args.run:
        measure(args)
        return 0

    from backend.weights import HUNYUAN3D_2_1_DIT

    with tempfile.TemporaryDirectory() as scratch:
        weights = args.dir or Path(scratch)
        checkpoint = weights / HUNYUAN3D_2_1_DIT.folder / "model.fp16.ckpt"
        if not checkpoint.is_file():
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "h21_random_weights.py"), str(weights)], check=True)
            print(f"(written in {time.perf_counter() - start:.0f} s)")
        command = [sys.executable, __file__, "--run", "--dir", str(weights), "--image", str(args.image), "--steps", str(args.steps),
                   "--octree-resolution", str(args.octree_resolution), "--volume-decoder", args.volume_decoder,
                   "--chunk-size", str(args.chunk_size), "--seed", str(args.seed)]
        print("running the job ...", flush=True)
        result = run_measurement(command)
        dit_bytes = dit_float32_bytes(checkpoint)
        file_bytes = checkpoint.stat().st_size
    report(args, result, dit_bytes, file_bytes)
    return 0


def report(args: argparse.Namespace, result: dict, dit_bytes: int, file_bytes: int) -> None:
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {result['threads']} torch threads; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{MODEL}, random weights ({file_bytes / GB:.2f} GB checkpoint), float32 on the CPU, stage mode; picture {args.image.name}; steps {args.steps}, "
          f"guidance {GUIDANCE} (classifier-free: batch 2), seed {args.seed}, octree {args.octree_resolution}, {args.volume_decoder} decoder, "
          f"chunk {args.chunk_size}")
    peak = print_stage_table(STAGES, result["stages"])
    steps = result["steps"]
    for (step, wall, cpu), (_, wall0, cpu0) in zip(steps[1:], steps):
        what = "loading the DiT + " if step == 1 else ""
        call = "no DiT call: the last step has zero length" if step == args.steps else f"{what}one DiT call"
        print(f"sampling step {step}/{args.steps}: {wall - wall0:.1f} s wall, {cpu - cpu0:.1f} CPU s ({call})")
    print(f"mesh: {result['vertices']} vertices, {result['faces']} faces (random weights: the surface is noise)")
    print(f"\nDiT float32 size: {dit_bytes / GB:.2f} GB")
    goal = dit_bytes + 2 * GB
    print(f"goal: stage-mode peak RSS {peak / GB:.2f} GB <= DiT float32 + 2 GB = {goal / GB:.2f} GB: {'met' if peak <= goal else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())
