"""The memory modes on one CUDA GPU at Hunyuan3D-1 std's released sizes: VRAM, time, copies, release.

Uses the weights ``benchmarks/cpu_memory.py`` writes (the real component classes at their
released sizes, random float16 weights in the official layout; written here if the folder has
none) and runs std's six stages through the real registration and loading path, the UNet
``--steps`` times like a denoising loop. Each mode runs in a fresh process: one job to load,
then a second, timed job, then ``release``. Printed: the pinned host-to-device bandwidth, a
table per mode, the accelerator memory before and after ``release`` against the CUDA context's
own baseline, and these goals:
  - peak VRAM: ``stage`` <= 10 GB, ``stream`` <= 6 GB;
  - time: ``stage`` <= 1.15x ``resident``, ``stream`` <= 1.5x;
  - copies reach at least 80% of the pinned bandwidth;
  - after ``release``: at most the context's baseline + 64 MiB in use;
  - every stage's output equals ``resident``'s element-wise (max abs diff printed; within 1e-3
    of the output's scale).

    python benchmarks/gpu_memory.py --dir /tmp/hy3d-std            # a few minutes on one large GPU
    python benchmarks/gpu_memory.py --dir /tmp/hy3d-std --modes stage stream --steps 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_memory import STAGES, stage_functions, stage_inputs, write_std_weights  # noqa: E402

GB = 1e9
MIB = 1 << 20


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


def device_used() -> int:
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def run_mode(mode: str, root: Path, steps: int) -> dict:
    import torch

    from backend.devices import PrecisionPolicy, SystemProbe, discover, pick_device
    from backend.memory import MemoryManager
    from backend.pipelines.hunyuan3d_v1.components import register_components
    from backend.pipelines.hunyuan3d_v1.multiview import StdMultiview
    from backend.pipelines.hunyuan3d_v1.svrm_pipeline import register_svrm

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the CUDA context exists from here on
    context_baseline = device_used()
    manager = MemoryManager(PrecisionPolicy(pick_device(discover(SystemProbe()), "cuda")), mode)
    register_components(manager, root / "mvd_std", "mvd_std", StdMultiview.parts)
    register_svrm(manager, root / "svrm" / "svrm.safetensors")
    inputs = {k: v.to("cuda") for k, v in stage_inputs().items()}
    functions = stage_functions({k: v.to(manager.compute_dtype("mvd_std.unet")) if v.is_floating_point() else v
                                 for k, v in inputs.items()})

    def job() -> dict[str, list[float]]:
        outputs = {}
        for stage, names in STAGES:
            repeats = steps if stage == "multiview" else 1

            def compute(modules, stage=stage, repeats=repeats):
                for _ in range(repeats):
                    out = functions[stage](modules)
                return out.float().flatten()[:4096].cpu().tolist()

            with torch.inference_mode():
                outputs[stage] = manager.run_stage(stage, list(names), compute)
        return outputs

    first_started = time.perf_counter()
    job()
    first = time.perf_counter() - first_started
    warm_from = len(manager.stats())
    started = time.perf_counter()
    outputs = job()
    seconds = time.perf_counter() - started
    warm = manager.stats()[warm_from:]
    before = device_used()
    released = manager.release()
    after = device_used()
    h2d_bytes = sum(s["h2d_bytes"] for s in warm)
    h2d_seconds = sum(s["h2d_seconds"] for s in warm)
    return {
        "mode": mode,
        "first_job_seconds": first,
        "seconds": seconds,
        "peak_vram": max(s["peak_device_bytes"] for s in warm),
        "h2d_bytes": h2d_bytes,
        "h2d_gbps": h2d_bytes / h2d_seconds / GB if h2d_seconds else None,
        "outputs": outputs,
        "pinned": all(c["pinned"] for c in manager.describe()["components"]) if mode != "resident" else None,
        "context_baseline": context_baseline,
        "used_before_release": before,
        "used_after_release": after,
        "released": released,
        "stages": warm,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dir", type=Path, required=True, help="folder of the std weights (written by cpu_memory.py, or here)")
    parser.add_argument("--steps", type=int, default=10, help="UNet calls in the multiview stage, like denoising steps (default 10)")
    parser.add_argument("--modes", nargs="+", default=["resident", "stage", "stream"], choices=["resident", "stage", "stream"])
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU and a CUDA build of PyTorch "
              f"(found torch {torch.__version__}, CUDA available: no); run benchmarks/cpu_memory.py on this machine",
              file=sys.stderr)
        return 2
    if args.run_mode:
        print(json.dumps(run_mode(args.run_mode, args.dir, args.steps)))
        return 0

    started = time.perf_counter()
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    bandwidth = pinned_bandwidth()
    print(f"pinned host-to-device bandwidth: {bandwidth:.1f} GB/s", flush=True)
    write_std_weights(args.dir)
    results = {}
    for mode in args.modes:
        print(f"{mode} ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--run-mode", mode, "--steps", str(args.steps)],
                             stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            return out.returncode
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ok = report(results, bandwidth)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


def report(results: dict, bandwidth: float) -> bool:
    base = results.get("resident")
    print()
    print(f"{'mode':9} {'warm job':>9} {'x resident':>10} {'first job':>10} {'peak VRAM':>10} {'H2D':>8} {'H2D rate':>10} {'of pinned':>9}")
    for mode, r in results.items():
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        rate = f"{r['h2d_gbps']:.1f} GB/s" if r["h2d_gbps"] else "-"
        share = f"{r['h2d_gbps'] / bandwidth:.0%}" if r["h2d_gbps"] else "-"
        print(f"{mode:9} {r['seconds']:7.2f} s {ratio:>10} {r['first_job_seconds']:8.2f} s {r['peak_vram'] / GB:7.2f} GB "
              f"{r['h2d_bytes'] / GB:5.1f} GB {rate:>10} {share:>9}")
    print(f"\n{'mode':9} {'CUDA context':>13} {'before release':>15} {'after release':>14} {'freed (manager)':>16}")
    for mode, r in results.items():
        print(f"{mode:9} {r['context_baseline'] / MIB:9.0f} MiB {r['used_before_release'] / MIB:11.0f} MiB "
              f"{r['used_after_release'] / MIB:10.0f} MiB {r['released']['freed_bytes'] / MIB:12.0f} MiB")
    checks = []
    limits = {"stage": 10 * GB, "stream": 6 * GB}
    for mode, limit in limits.items():
        if mode in results:
            checks.append((f"{mode} peak VRAM <= {limit / GB:.0f} GB", results[mode]["peak_vram"] <= limit))
    if base and "stage" in results:
        checks.append(("stage time <= 1.15x resident", results["stage"]["seconds"] <= 1.15 * base["seconds"]))
    if base and "stream" in results:
        checks.append(("stream time <= 1.5x resident", results["stream"]["seconds"] <= 1.5 * base["seconds"]))
    for mode in ("stage", "stream"):
        if mode in results and results[mode]["h2d_gbps"]:
            checks.append((f"{mode} copies >= 80% of pinned bandwidth", results[mode]["h2d_gbps"] >= 0.8 * bandwidth))
            checks.append((f"{mode} host copies pinned", bool(results[mode]["pinned"])))
    for mode, r in results.items():
        checks.append((f"{mode}: after release <= CUDA context + 64 MiB", r["used_after_release"] <= r["context_baseline"] + 64 * MIB))
    if base:
        for mode, r in results.items():
            if mode == "resident":
                continue
            diffs = {stage: max(abs(a - b) for a, b in zip(r["outputs"][stage], base["outputs"][stage])) for stage in base["outputs"]}
            print(f"{mode} vs resident, max abs diff per stage: " + ", ".join(f"{s} {d:.3g}" for s, d in diffs.items()))
            scale = {stage: max(map(abs, base["outputs"][stage])) or 1.0 for stage in base["outputs"]}
            checks.append((f"{mode} outputs equal resident's (max abs diff <= 1e-3 of each output's scale)",
                           all(diffs[stage] <= 1e-3 * scale[stage] for stage in diffs)))
    for name, passed in checks:
        print(f"goal: {name}: {'met' if passed else 'NOT met'}")
    return all(passed for _, passed in checks)


if __name__ == "__main__":
    sys.exit(main())
