"""Hunyuan3D-1 reconstruction (SVRM) at full size through the real job engine, in each memory mode.

The model has the official sizes (458.7M parameters, stored in float16 like the released
file) with random weights, except that its triplane decoder and SDF head are set so the
field is a sphere (the same construction the tests use): the mesh is then known, and the
run exercises exactly what a real checkpoint does (loading, precision, memory modes, the
384^3 grid, marching cubes, clean-up, decimation). Each mode runs two jobs in one engine;
the second shows the warm cost. Printed: stage times, peak accelerator memory, and the mesh.

    python benchmarks/reconstruction.py                      # the GPU if there is one
    python benchmarks/reconstruction.py --device cpu --resolution 96 --modes cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (default auto)")
    parser.add_argument("--modes", nargs="+", default=["resident", "stage", "stream"], help="memory modes to run")
    parser.add_argument("--resolution", type=int, default=384, help="SDF grid samples per axis (default 384, as upstream)")
    parser.add_argument("--max-faces", type=int, default=120000, help="face limit (default 120000)")
    args = parser.parse_args()

    import torch
    from test_svrm import sphere_svrm, views_request

    from backend.jobs import Job, JobEngine
    from backend.pipelines.base import JobRequest
    from backend.pipelines.hunyuan3d_v1.svrm import SVRMConfig
    from backend.pipelines.hunyuan3d_v1.svrm.loading import save_checkpoint
    from backend.runtime import Runtime

    folder = Path(tempfile.mkdtemp(prefix="hy3d-svrm-"))
    (folder / "svrm").mkdir()
    torch.manual_seed(0)
    save_checkpoint(sphere_svrm(radius=0.3, config=SVRMConfig()), folder / "svrm" / "svrm.safetensors")
    print(f"checkpoint: {(folder / 'svrm' / 'svrm.safetensors').stat().st_size / 1e9:.2f} GB (float16, official layout)")

    rows = []
    for mode in args.modes:
        runtime = Runtime.create(device=args.device, memory=mode)
        engine = JobEngine(runtime, output_dir=None, weights_dir=str(folder))
        pipeline = engine.pipeline("hunyuan3d-1-svrm")
        request: JobRequest = views_request(pipeline, resolution=args.resolution, max_faces=args.max_faces)
        for attempt in ("first", "warm"):
            if runtime.memory.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            outcome: dict = {}
            job = Job(id=f"{mode}-{attempt}", request=request, owner=None, sink=lambda h, b, o=outcome: o.update(h))
            started = time.perf_counter()
            engine.execute(job)
            elapsed = time.perf_counter() - started
            if outcome.get("op") != "result":
                print(f"{mode} {attempt}: {outcome}")
                return 1
            peak = torch.cuda.max_memory_allocated() / 1e9 if runtime.memory.device.type == "cuda" else float("nan")
            timings = outcome["timings"]
            rows.append((mode, attempt, elapsed, timings.get("encode", 0), timings.get("triplane", 0), timings.get("mesh", 0),
                         peak, outcome["mesh"]["faces"]))
        device = runtime.describe_devices()
        runtime.memory.close()
    selected = next(d for d in device if d.get("selected"))
    print(f"device: {selected['name']} ({selected['device']}), computes in {selected.get('compute_dtype')}; "
          f"torch {torch.__version__}; grid {args.resolution}^3")
    print(f"{'mode':<9}{'job':<7}{'total s':>9}{'encode s':>10}{'triplane s':>12}{'mesh s':>9}{'peak GB':>9}{'faces':>9}")
    for mode, attempt, total, encode, triplane, mesh, peak, faces in rows:
        print(f"{mode:<9}{attempt:<7}{total:>9.2f}{encode:>10.3f}{triplane:>12.3f}{mesh:>9.2f}{peak:>9.2f}{faces:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
