"""How much quicker a preview is than the full run, per model whose weights are here.

For each pipeline whose weights are present (``check_weights``), a picture goes through the
real pipeline and a CPU (or --device) runtime twice per round: once with the defaults, once
with the preview values the pipeline's catalogue declares (``Param.preview``, what the
add-on's Preview Variations sends). Rounds alternate the order, the first round (loading)
is not counted, and the figure is the ratio of the medians within this one run, with the
faces of each mesh.

Run: python benchmarks/preview_speed.py [--image examples/snowman.png] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import pipelines  # noqa: E402
from backend.pipelines.base import JobContext, JobRequest  # noqa: E402
from backend.runtime import Runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=str(ROOT / "examples" / "snowman.png"), help="input picture (PNG or JPEG)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the first (default 5)")
    parser.add_argument("--device", default="cpu", help="device of the runtime (default cpu)")
    parser.add_argument("--weights", default=None, help="weights folder (default: where the backend looks)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    import torch

    image = Path(args.image).read_bytes()
    runtime = Runtime.create(device=args.device, memory="cpu" if args.device == "cpu" else "auto")
    context = JobContext(lambda event: None, lambda: False, runtime)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {args.device}; picture {Path(args.image).name}")
    for name in pipelines.names():
        pipeline = pipelines.get(name)(weights_dir=args.weights)
        described = pipeline.describe()
        preview = {p["name"]: p["preview"] for p in described["params"] if "preview" in p}
        if not preview or "image" not in described["inputs"]:
            continue
        if not pipeline.check_weights().ready:
            print(f"{name}: weights not here, skipped")
            continue
        seconds: dict[str, list[float]] = {"full": [], "preview": []}
        faces: dict[str, int] = {}
        for round_number in range(args.rounds + 1):
            order = ("full", "preview") if round_number % 2 else ("preview", "full")
            for kind in order:
                params = dict(preview) if kind == "preview" else {}
                request = pipeline.validate(JobRequest(name, params, images={"image": image}))
                started = time.perf_counter()
                mesh = pipeline.run(request, context).mesh
                if round_number:
                    seconds[kind].append(time.perf_counter() - started)
                faces[kind] = mesh.face_count
        full, quick = statistics.median(seconds["full"]), statistics.median(seconds["preview"])
        print(f"{name}: preview {preview}: median {quick:.3f} s ({faces['preview']} faces) against full "
              f"{full:.3f} s ({faces['full']} faces): {full / quick:.1f}x quicker ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
