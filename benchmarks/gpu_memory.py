"""The memory modes on one CUDA GPU: peak VRAM, time and host-to-device bandwidth.

Three synthetic components shaped like Hunyuan3D-1's (default 2.5, 1.7 and 0.9 GB of float16
weights in safetensors files, each a stack of transformer-sized blocks) run as three stages,
the first one several times like a denoising loop. Each mode runs in a fresh process: one job
to load, then a second, timed job. Printed: a table per mode and these goals:
  - `stage` takes at most 1.15x the `resident` time;
  - `stream`, with a budget of a quarter of the largest component, at most 1.5x;
  - copies reach at least 80% of this machine's pinned host-to-device bandwidth;
  - every mode computes the same result as `resident`.

    python benchmarks/gpu_memory.py            # about 2-3 minutes on an H100
    python benchmarks/gpu_memory.py --sizes-gb 1.0 0.6 0.3 --tokens 8192
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
WIDTH = 4096
STAGES = (("multiview", "unet"), ("encode", "vision_encoder"), ("reconstruct", "svrm"))
BLOCK_BYTES = 3 * WIDTH * WIDTH * 2


def block_stack(blocks: int):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.c(torch.nn.functional.gelu(self.b(torch.nn.functional.gelu(self.a(x))))) * 0.1

    return nn.Sequential(*(Block() for _ in range(blocks)))


def blocks_for(size_gb: float) -> int:
    return max(2, round(size_gb * GB / BLOCK_BYTES))


def write_components(folder: Path, sizes_gb: list[float]) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    paths = []
    for index, ((_, name), size) in enumerate(zip(STAGES, sizes_gb)):
        path = folder / f"{name}.safetensors"
        generator = torch.Generator().manual_seed(index)
        weights = {f"{b}.{part}.weight": (torch.rand(WIDTH, WIDTH, generator=generator, dtype=torch.float16) - 0.5) * 0.03
                   for b in range(blocks_for(size)) for part in "abc"}
        save_file(weights, str(path))
        del weights
        paths.append(path)
    return paths


def pinned_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """The best host-to-device rate from pinned memory on this machine, in GB/s."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = 0.0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        device.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        best = max(best, nbytes / (start.elapsed_time(end) / 1000) / GB)
    return best


def run_mode(mode: str, paths: list[Path], tokens: int, steps: int, budget: int | None) -> dict:
    import torch

    from backend.devices import PrecisionPolicy, SystemProbe, discover, pick_device
    from backend.memory import MemoryManager, load_safetensors_module

    policy = PrecisionPolicy(pick_device(discover(SystemProbe()), "cuda"))
    manager = MemoryManager(policy, mode, budget_bytes=budget)
    for (_, name), path in zip(STAGES, paths):
        blocks = round(path.stat().st_size / BLOCK_BYTES)
        manager.register(name, lambda blocks=blocks, path=path: load_safetensors_module(lambda: block_stack(blocks), path),
                         blocks=lambda module: list(module))
    x = torch.randn(tokens, WIDTH, generator=torch.Generator().manual_seed(0))

    def job() -> list[float]:
        results = []
        for index, (stage, name) in enumerate(STAGES):
            repeats = steps if index == 0 else 1

            def compute(modules, name=name, repeats=repeats):
                h = x.to(manager.device, manager.compute_dtype(name), non_blocking=True)
                for _ in range(repeats):
                    h = modules[name](h)
                return h.float().norm().item()

            results.append(manager.run_stage(stage, [name], compute))
        return results

    first_started = time.perf_counter()
    job()
    first = time.perf_counter() - first_started
    warm_from = len(manager.stats())
    started = time.perf_counter()
    checksums = job()
    seconds = time.perf_counter() - started
    warm = manager.stats()[warm_from:]
    h2d_bytes = sum(s["h2d_bytes"] for s in warm)
    h2d_seconds = sum(s["h2d_seconds"] for s in warm)
    return {
        "mode": mode,
        "first_job_seconds": first,
        "seconds": seconds,
        "peak_vram": max(s["peak_device_bytes"] for s in warm),
        "h2d_bytes": h2d_bytes,
        "h2d_gbps": h2d_bytes / h2d_seconds / GB if h2d_seconds else None,
        "checksums": checksums,
        "pinned": all(c["pinned"] for c in manager.describe()["components"]) if mode != "resident" else None,
        "compute_bytes": {c["name"]: c["compute_bytes"] for c in manager.describe()["components"]},
        "stages": warm,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes-gb", type=float, nargs=3, default=[2.5, 1.7, 0.9], metavar="GB",
                        help="float16 sizes of the three components (default: 2.5 1.7 0.9)")
    parser.add_argument("--tokens", type=int, default=16384, help="rows of the activations each block multiplies (default 16384)")
    parser.add_argument("--steps", type=int, default=10, help="times the first stage runs its component, like denoising steps (default 10)")
    parser.add_argument("--modes", nargs="+", default=["resident", "stage", "stream"], choices=["resident", "stage", "stream"])
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU and a CUDA build of PyTorch "
              f"(found torch {torch.__version__}, CUDA available: no); run benchmarks/cpu_memory.py on this machine",
              file=sys.stderr)
        return 2
    if args.run_mode:
        print(json.dumps(run_mode(args.run_mode, args.files, args.tokens, args.steps, args.budget)))
        return 0

    started = time.perf_counter()
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    bandwidth = pinned_bandwidth()
    print(f"pinned host-to-device bandwidth: {bandwidth:.1f} GB/s", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="hy3d-gpu-bench-") as folder:
        print(f"writing components of {', '.join(f'{s:.1f}' for s in args.sizes_gb)} GB (float16) ...", flush=True)
        paths = write_components(Path(folder), args.sizes_gb)
        largest = max(p.stat().st_size for p in paths)
        for mode in args.modes:
            print(f"{mode} ...", flush=True)
            command = [sys.executable, __file__, "--run-mode", mode, "--tokens", str(args.tokens), "--steps", str(args.steps),
                       "--files", *map(str, paths)]
            if mode == "stream":
                command += ["--budget", str(largest // 4)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ok = report(results, bandwidth, largest)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


def report(results: dict, bandwidth: float, largest: int) -> bool:
    base = results.get("resident")
    print()
    print(f"{'mode':9} {'warm job':>9} {'x resident':>10} {'first job':>10} {'peak VRAM':>10} {'H2D':>8} {'H2D rate':>10} {'of pinned':>9}")
    for mode, r in results.items():
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        rate = f"{r['h2d_gbps']:.1f} GB/s" if r["h2d_gbps"] else "-"
        share = f"{r['h2d_gbps'] / bandwidth:.0%}" if r["h2d_gbps"] else "-"
        print(f"{mode:9} {r['seconds']:7.2f} s {ratio:>10} {r['first_job_seconds']:8.2f} s {r['peak_vram'] / GB:7.2f} GB "
              f"{r['h2d_bytes'] / GB:5.1f} GB {rate:>10} {share:>9}")
    print(f"\nlargest component {largest / GB:.2f} GB; stream budget a quarter of it: {largest / 4 / GB:.2f} GB")
    checks = []
    if base and "stage" in results:
        checks.append(("stage time <= 1.15x resident", results["stage"]["seconds"] <= 1.15 * base["seconds"]))
    if base and "stream" in results:
        checks.append(("stream time <= 1.5x resident", results["stream"]["seconds"] <= 1.5 * base["seconds"]))
    for mode in ("stage", "stream"):
        if mode in results and results[mode]["h2d_gbps"]:
            checks.append((f"{mode} copies >= 80% of pinned bandwidth", results[mode]["h2d_gbps"] >= 0.8 * bandwidth))
            checks.append((f"{mode} host copies pinned", bool(results[mode]["pinned"])))
    if base:
        for mode, r in results.items():
            same = all(abs(a - b) <= 1e-2 * max(abs(b), 1.0) for a, b in zip(r["checksums"], base["checksums"]))
            checks.append((f"{mode} result equals resident", same))
    for name, passed in checks:
        print(f"goal: {name}: {'PASS' if passed else 'FAIL'}")
    return all(passed for _, passed in checks)


if __name__ == "__main__":
    sys.exit(main())
