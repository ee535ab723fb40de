"""Peak host memory of `stage` against `resident` mode on the CPU, at Hunyuan3D-1 sizes.

Writes three synthetic components as float16 safetensors files (default 2.5, 1.7 and 0.9 GB,
the sizes of the multiview UNet, a vision encoder and the SVRM), then runs them as three stages
through the memory manager, each mode in a fresh process, and prints the peak RSS of each.
Goal: `stage` peaks at no more than the largest stage (its float32 execution copy) plus 1 GB;
`resident` holds the sum.

    python benchmarks/cpu_memory.py                   # real sizes, about two minutes on 2 cores
    python benchmarks/cpu_memory.py --sizes-gb 0.3 0.2 0.1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GB = 1e9
WIDTH = 4096  # one 4096x4096 float16 layer is 32 MiB
STAGE_NAMES = ("unet", "vision_encoder", "svrm")


def synthetic_model(layers: int):
    from torch import nn

    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)))


def layers_for(size_gb: float) -> int:
    return max(1, round(size_gb * GB / (WIDTH * WIDTH * 2)))


def write_components(folder: Path, sizes_gb: list[float]) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    paths = []
    for name, size in zip(STAGE_NAMES, sizes_gb):
        path = folder / f"{name}.safetensors"
        layers = layers_for(size)
        if not path.exists() or path.stat().st_size < layers * WIDTH * WIDTH * 2:
            generator = torch.Generator().manual_seed(len(paths))
            weights = {f"{i}.weight": (torch.rand(WIDTH, WIDTH, generator=generator, dtype=torch.float16) - 0.5) * 0.03
                       for i in range(layers)}
            save_file(weights, str(path))
            del weights
        paths.append(path)
    return paths


def run_mode(mode: str, paths: list[Path]) -> dict:
    """One process, one mode: three stages, one component each; returns the figures as a dict."""
    import torch

    from backend.memory import MemoryManager, load_safetensors_module
    from backend.memory.stats import current_rss

    torch.set_num_threads(max(1, torch.get_num_threads()))
    manager = MemoryManager(mode=mode)
    for name, path in zip(STAGE_NAMES, paths):
        layers = layers_for(path.stat().st_size / GB)
        manager.register(name, lambda layers=layers, path=path: load_safetensors_module(lambda: synthetic_model(layers), path))
    x = torch.randn(4, WIDTH)
    baseline = current_rss()
    started = time.perf_counter()
    for name in STAGE_NAMES:
        manager.run_stage(name, [name], lambda modules, name=name: modules[name](x.to(manager.compute_dtype(name))).sum().item())
    return {
        "mode": mode,
        "seconds": time.perf_counter() - started,
        "baseline_rss": baseline,
        "peak_rss": max(s["peak_host_rss_bytes"] for s in manager.stats()),  # each stage measures its own span
        "stages": manager.stats(),
        "compute_bytes": {c["name"]: c["compute_bytes"] for c in manager.describe()["components"]},
        "storage_bytes": {c["name"]: c["storage_bytes"] for c in manager.describe()["components"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes-gb", type=float, nargs=3, default=[2.5, 1.7, 0.9], metavar="GB",
                        help="float16 sizes of the three components (default: 2.5 1.7 0.9)")
    parser.add_argument("--dir", type=Path, help="folder for the safetensors files (default: a temporary folder, removed after)")
    parser.add_argument("--modes", nargs="+", default=["resident", "stage"], choices=["resident", "stage", "cpu"],
                        help="modes to measure (default: resident stage)")
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_mode:
        print(json.dumps(run_mode(args.run_mode, args.files)))
        return 0

    with tempfile.TemporaryDirectory(prefix="hy3d-bench-") as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing components of {', '.join(f'{s:.1f}' for s in args.sizes_gb)} GB (float16) ...", flush=True)
        paths = write_components(folder, args.sizes_gb)
        results = {}
        for mode in args.modes:
            print(f"running three stages in {mode} mode ...", flush=True)
            out = subprocess.run([sys.executable, __file__, "--run-mode", mode, "--files", *map(str, paths)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return report(results)


def report(results: dict) -> int:
    any_result = next(iter(results.values()))
    storage, compute = any_result["storage_bytes"], any_result["compute_bytes"]
    print()
    print(f"{'component':16} {'float16 on disk':>16} {'float32 to run':>15}")
    for name in STAGE_NAMES:
        print(f"{name:16} {storage[name] / GB:13.2f} GB {compute[name] / GB:12.2f} GB")
    print()
    print(f"{'mode':10} {'peak RSS':>10} {'over baseline':>14} {'time':>8}   per-stage peak RSS")
    for mode, r in results.items():
        per_stage = ", ".join(f"{s['stage']} {s['peak_host_rss_bytes'] / GB:.2f}" for s in r["stages"])
        print(f"{mode:10} {r['peak_rss'] / GB:7.2f} GB {(r['peak_rss'] - r['baseline_rss']) / GB:11.2f} GB "
              f"{r['seconds']:6.1f} s   {per_stage}")
    largest, total = max(compute.values()), sum(compute.values())
    print(f"\nlargest stage {largest / GB:.2f} GB, sum of stages {total / GB:.2f} GB (float32 execution copies)")
    ok = True
    if "stage" in results:
        stage_peak = results["stage"]["peak_rss"]
        limit = largest + GB
        passed = stage_peak <= limit
        ok &= passed
        print(f"goal: stage peak {stage_peak / GB:.2f} GB <= largest stage + 1 GB = {limit / GB:.2f} GB: {'PASS' if passed else 'FAIL'}")
    if "stage" in results and "resident" in results:
        ratio = results["stage"]["peak_rss"] / results["resident"]["peak_rss"]
        print(f"stage / resident peak RSS: {ratio:.2f} "
              f"({results['stage']['peak_rss'] / GB:.2f} GB against {results['resident']['peak_rss'] / GB:.2f} GB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
