"""Hunyuan3D-2 turbo models on one GPU at full size: peak memory and time per memory mode.

Writes full-size random weights in the official layout (benchmarks/h2_random_weights.py) for each
model unless ``--dir`` holds them, then runs each model in each mode in a fresh process through
the job engine, as ``python -m backend generate --memory MODE`` does: a first job loads, a second
identical one is timed. Printed per model and mode: the second job's time and its ratio to
``resident``, its peak accelerator memory (``torch.cuda.max_memory_allocated``, reset before the
job; the memory manager resets it at each of its stages, so the job's peak is the largest of the
stages' and what followed the last) and each stage's peak, the mesh against ``resident``'s (the same
faces, max abs diff of the vertices), and the goals for ``hunyuan3d-2-turbo`` (v2-0):
``stage`` <= 3.5 GB, ``stream`` <= 2 GB at <= 1.3x the ``resident`` time.

``--memory-fraction`` caps the process like a smaller card (0.056 of an H200's 141 GB is about
8 GB) through ``torch.cuda.set_per_process_memory_fraction``; the memory manager's free memory
respects the cap, so it plans (and places decoding's grids) as on that card. ``--device cpu --small`` runs the
same path on a few-MB model of the same layout, to check the script without a GPU (peak host RSS
then stands in for accelerator memory; the goals do not apply).

    python benchmarks/h2_memory.py --dir /tmp/h2-weights                    # one GPU; writes about 10 GB of weights
    python benchmarks/h2_memory.py --dir /tmp/h2-weights --memory-fraction 0.056
    python benchmarks/h2_memory.py --dir /tmp/h2-small --device cpu --small --octree-resolution 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

GB = 1e9
MODELS = ("hunyuan3d-2-turbo", "hunyuan3d-2mini-turbo")
GOALS = {"hunyuan3d-2-turbo": {"stage": 3.5 * GB, "stream": 2.0 * GB}}
STREAM_TIME_GOAL = 1.3


def run_mode(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from h2_cpu import StageClock, make_engine, run_job

    cuda = args.device == "cuda"
    if cuda and args.memory_fraction:
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    engine = make_engine(args.device, args.run, args.dir)
    params = {"steps": args.steps, "seed": 0, "octree_resolution": args.octree_resolution, "background_method": "alpha"}
    run_job(engine, args.model, args.image, params, StageClock())  # loads
    clock = StageClock()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stages_before = len(engine.runtime.memory.stats())
    started = time.perf_counter()
    mesh, header, _steps = run_job(engine, args.model, args.image, params, clock)
    seconds = time.perf_counter() - started
    stats = engine.runtime.memory.stats()[stages_before:]
    stage_peaks = {s["stage"]: s["peak_device_bytes"] if cuda else s["peak_host_rss_bytes"] for s in stats}
    if cuda:
        # The memory manager resets the peak at each of its stages: the job's is the largest of theirs and what came after.
        peak = max([torch.cuda.max_memory_allocated(), *(p for p in stage_peaks.values() if p is not None)])
    else:
        peak = max(figures["peak_rss"] for figures in clock.stages.values())
    np.savez(args.mesh_out, positions=mesh.positions, faces=mesh.faces)
    return {"seconds": seconds, "peak": peak, "timings": header["timings"], "stage_peaks": stage_peaks,
            "moved": sum(s["h2d_bytes"] for s in stats), "faces": mesh.face_count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dir", type=Path, required=True, help="weights folder (random weights are written there if missing)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", choices=["resident", "stage", "stream"],
                        help="default: resident stage stream (resident stage with --device cpu: stream needs a GPU)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (default), or cpu to check the script")
    parser.add_argument("--memory-fraction", type=float, help="cap the process at this share of the GPU's memory (e.g. 0.056: 8 GB of 141)")
    parser.add_argument("--small", action="store_true", help="a few-MB model of the same layout instead of the released sizes")
    parser.add_argument("--steps", type=int, default=5, help="sampling steps (default 5, the turbo default)")
    parser.add_argument("--octree-resolution", type=int, default=380, help="grid cells per axis (default 380, the turbo default)")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "snowman.png", help="an RGBA picture (default: examples/snowman.png)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # a fresh process's mode
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mesh-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_fraction is not None and not 0 < args.memory_fraction <= 1:
        parser.error("--memory-fraction must be in (0, 1]")
    if args.memory_fraction is not None and args.device != "cuda":
        parser.error("--memory-fraction caps GPU memory: use it with --device cuda")
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if args.modes is None:
        args.modes = ["resident", "stage", "stream"] if args.device == "cuda" else ["resident", "stage"]
    if args.device == "cpu" and "stream" in args.modes:
        parser.error("--modes stream needs a CUDA GPU: on the CPU use resident and stage")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda needs a CUDA GPU and a CUDA build of PyTorch "
              f"(found torch {torch.__version__}, CUDA available: no); check the script with --device cpu --small", file=sys.stderr)
        return 2
    if args.run:
        print(json.dumps(run_mode(args)))
        return 0

    from h2_random_weights import write_weights

    from backend.weights import HUNYUAN3D_2_MODELS

    machine = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    cap = f", capped at {args.memory_fraction:g} of its memory" if args.memory_fraction else ""
    print(f"device: {machine}{cap}; torch {torch.__version__}; {'small' if args.small else 'full-size'} random weights; "
          f"steps {args.steps}, octree {args.octree_resolution}, FlashVDM (the turbo default)", flush=True)
    ok = True
    meshes = tempfile.TemporaryDirectory()
    for model in args.models:
        if not all((args.dir / f.folder / "model.fp16.safetensors").is_file() for f in HUNYUAN3D_2_MODELS[model]):
            write_weights(model, args.dir, small=args.small)
        results = {}
        for mode in args.modes:
            mesh_out = Path(meshes.name) / f"{model}-{mode}.npz"
            command = [sys.executable, __file__, "--run", mode, "--model", model, "--dir", str(args.dir), "--device", args.device,
                       "--steps", str(args.steps), "--octree-resolution", str(args.octree_resolution), "--image", str(args.image),
                       "--mesh-out", str(mesh_out)]
            if args.memory_fraction:
                command += ["--memory-fraction", str(args.memory_fraction)]
            print(f"{model}, {mode} ...", flush=True)
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            if done.returncode:
                return done.returncode
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1]) | {"mesh": mesh_out}
            print(f"  job {results[mode]['seconds']:.1f} s, peak {results[mode]['peak'] / GB:.2f} GB", flush=True)
        ok &= report(model, results, args.device)
    meshes.cleanup()
    return 0 if ok else 1


def report(model: str, results: dict, device: str) -> bool:
    import numpy as np

    memory = "peak VRAM" if device == "cuda" else "peak RSS"
    base = results.get("resident")
    print(f"\n{model}: {'mode':9} {'job s':>8} {'x resident':>10} {memory:>10} {'moved':>9}   per-stage peaks (GB)")
    for mode, r in results.items():
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        stages = ", ".join(f"{stage} {peak / GB:.2f}" for stage, peak in r["stage_peaks"].items() if peak is not None)
        print(f"{'':{len(model) + 2}}{mode:9} {r['seconds']:8.1f} {ratio:>10} {r['peak'] / GB:7.2f} GB {r['moved'] / GB:6.2f} GB   {stages}")
    checks = []
    if base:
        reference = np.load(base["mesh"])
        for mode, r in results.items():
            if mode == "resident":
                continue
            mesh = np.load(r["mesh"])
            same = np.array_equal(mesh["faces"], reference["faces"])
            diff = float(np.abs(mesh["positions"] - reference["positions"]).max()) if same else float("nan")
            print(f"{mode} vs resident: same faces: {'yes' if same else 'no'}; vertices max abs diff {diff:.3g}")
            checks.append((f"{mode} mesh equals resident's (same faces)", same))
    if device == "cuda":
        for mode, limit in GOALS.get(model, {}).items():
            if mode in results:
                checks.append((f"{mode} peak VRAM <= {limit / GB:.1f} GB", results[mode]["peak"] <= limit))
        if model in GOALS and base and "stream" in results:
            checks.append((f"stream time <= {STREAM_TIME_GOAL}x resident", results["stream"]["seconds"] <= STREAM_TIME_GOAL * base["seconds"]))
    for name, passed in checks:
        print(f"goal: {name}: {'met' if passed else 'NOT met'}")
    return all(passed for _, passed in checks)


if __name__ == "__main__":
    sys.exit(main())
