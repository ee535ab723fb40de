"""Score Nano on shapes it never trained on and time picture -> coloured mesh.

    python -m backend.pipelines.nano.evaluate

The reported figures come from the test seeds (``data.TEST_SEEDS``, the default split), which
no decision about the model has seen; ``--split validation`` scores the first validation seeds
instead, which is what recipes are compared on. For each shape the model reads the picture the
data generator renders and the figures of ``metrics.score`` are taken: volumetric IoU on a grid
over [-0.6, 0.6]^3, Chamfer distance between the two surfaces, and mean absolute RGB error
(0..1 scale) on the true surface. Means come with a 95% percentile-bootstrap interval over the
shapes, overall and per kind of shape. The timing runs the ``nano`` pipeline itself (PNG bytes
in, finished mesh out, grid 128 by default) through a CPU runtime with the memory manager, as
the backend serves it.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .checkpoint import BUNDLED_WEIGHTS, load_model
from .data import COMPARISON_SEEDS, TEST_SEEDS, aligned_shape, image_tensor, render_input
from .metrics import ShapeScores, bootstrap_interval, score
from .model import NanoModel
from .shapes import Shape

SPLITS = {"test": TEST_SEEDS, "validation": COMPARISON_SEEDS}


class PredictedField:
    """A trained model's field for one picture, with a ``Shape``'s ``sdf``/``sdf_and_color`` interface.

    Points come in and values go out on the CPU wherever the model lives, so scoring, calibration
    and the showcase's renderer can read a model that is training on a GPU.
    """

    def __init__(self, model: NanoModel, shape: Shape, elevation: float):
        self.model = model
        self.device = next(model.parameters()).device
        with torch.inference_mode():
            self.planes = model.encode(image_tensor(render_input(shape, elevation)[None]).to(self.device))

    def sdf_and_color(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            sdf, rgb = self.model.query(self.planes, points[None].to(self.device))
        return sdf[0].cpu().clone(), rgb[0].cpu().clone()

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.sdf_and_color(points)[0]

    def color(self, points: torch.Tensor) -> torch.Tensor:
        return self.sdf_and_color(points)[1]


def score_seed(model: NanoModel, seed: int, resolution: int, chamfer_points: int = 10000) -> tuple[Shape, ShapeScores]:
    """The model's figures on the picture of ``seed`` against that seed's shape."""
    shape, _, elevation = aligned_shape(seed)
    field = PredictedField(model, shape, elevation)
    result = score(field.sdf, field.color, shape, resolution=resolution, bound=model.config.bound,
                   chamfer_points=chamfer_points, seed=seed)
    return shape, result


def summary(rows: list[dict]) -> dict:
    """Mean, median and 95% interval of IoU, and mean and interval of Chamfer distance, over ``rows``.

    A prediction with no surface at all has no Chamfer distance; those shapes are counted instead.
    """
    iou = np.array([r["iou"] for r in rows])
    chamfer = np.array([r["chamfer"] for r in rows if np.isfinite(r["chamfer"])])
    return {
        "shapes": len(rows),
        "mean_iou": float(iou.mean()),
        "iou_interval": bootstrap_interval(iou),
        "median_iou": float(np.median(iou)),
        "mean_chamfer": float(chamfer.mean()) if len(chamfer) else float("inf"),
        "chamfer_interval": bootstrap_interval(chamfer) if len(chamfer) else (float("inf"), float("inf")),
        "no_surface": len(rows) - len(chamfer),
    }


def shape_row(model: NanoModel, seed: int, resolution: int) -> dict:
    shape, result = score_seed(model, seed, resolution)
    return {"seed": seed, "name": shape.name, "iou": result.iou, "chamfer": result.chamfer, "color_error": result.color_error}


_worker_model: NanoModel | None = None


def _start_worker(weights: Path) -> None:
    global _worker_model
    torch.set_num_threads(1)
    _worker_model = load_model(weights)


def _worker_row(seed: int, resolution: int) -> dict:
    return shape_row(_worker_model, seed, resolution)


def score_seeds(weights: Path, seeds: range, resolution: int, workers: int = 1, log=print) -> dict:
    """Every figure of the model in ``weights`` on ``seeds``: overall, per kind of shape, and per shape.

    With ``workers`` above 1 the shapes are shared out among that many processes of one torch
    thread each (on a busy machine, one thread a process wastes the least CPU on waiting).
    """
    per_shape = []

    def collect(rows) -> None:
        for row in rows:
            per_shape.append(row)
            if len(per_shape) % 20 == 0:
                log(f"  scored {len(per_shape)}/{len(seeds)}")

    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_start_worker, initargs=(weights,)) as pool:
            collect(pool.imap(functools.partial(_worker_row, resolution=resolution), seeds))
    else:
        model = load_model(weights)
        collect(shape_row(model, seed, resolution) for seed in seeds)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for row in per_shape:
        by_kind[row["name"]].append(row)
    kinds = {name: summary(rows) for name, rows in by_kind.items()}
    return {
        **summary(per_shape),
        "first_seed": seeds[0],
        "last_seed": seeds[-1],
        "grid": resolution,
        "mean_color_error": float(np.mean([r["color_error"] for r in per_shape])),
        "by_kind": dict(sorted(kinds.items(), key=lambda item: -item[1]["mean_iou"])),  # best kind first
        "per_shape": per_shape,
    }


def example_png(seed: int) -> bytes:
    """The picture of ``seed`` as PNG bytes (straight alpha, as a user's cut-out would be)."""
    from PIL import Image

    shape, _, elevation = aligned_shape(seed)
    framed = render_input(shape, elevation).astype(np.float32)
    alpha = framed[..., 3:] / 255.0
    straight = np.where(alpha > 0, framed[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    rgba = np.concatenate([straight, framed[..., 3:]], axis=-1).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def time_pipeline(weights: Path, seeds: range, runs: int, resolution: int) -> dict:
    """Seconds from PNG bytes to the finished coloured mesh through the real pipeline and runtime."""
    from ...runtime import Runtime
    from ..base import JobContext, JobRequest
    from .pipeline import NanoPipeline

    runtime = Runtime.create(device="cpu", memory="cpu")
    pipeline = NanoPipeline(weights_dir=str(weights.parent))
    context = JobContext(lambda event: None, lambda: False, runtime)
    seconds, faces = [], []
    for run in range(runs + 1):  # the first run also loads the weights; it is reported apart
        request = pipeline.validate(JobRequest("nano", {"resolution": resolution}, images={"image": example_png(seeds[run % len(seeds)])}))
        started = time.perf_counter()
        mesh = pipeline.run(request, context).mesh
        seconds.append(time.perf_counter() - started)
        faces.append(mesh.face_count)
    return {"grid": resolution, "first_run_seconds": round(seconds[0], 3), "runs": runs,
            "median_seconds": round(statistics.median(seconds[1:]), 3), "max_seconds": round(max(seconds[1:]), 3),
            "mean_faces": int(np.mean(faces)), "threads": torch.get_num_threads()}


def interval(bounds: tuple[float, float], digits: int) -> str:
    return f"{bounds[0]:.{digits}f}-{bounds[1]:.{digits}f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m backend.pipelines.nano.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS, help="nano.safetensors to score")
    parser.add_argument("--split", choices=sorted(SPLITS), default="test",
                        help="test: the reported figures (default); validation: the shapes recipes are compared on")
    parser.add_argument("--shapes", type=int, default=500, help="shapes to score, from the first seed of the split")
    parser.add_argument("--grid", type=int, default=64, help="grid for IoU and the surfaces compared by Chamfer distance")
    parser.add_argument("--timing-runs", type=int, default=5, help="timed picture -> mesh runs (0 skips the timing)")
    parser.add_argument("--timing-grid", type=int, default=128, help="the pipeline's extraction grid while timing")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (the timing, and the scoring with one worker)")
    parser.add_argument("--workers", type=int, default=1, help="processes that score shapes side by side, one torch thread each")
    parser.add_argument("--json", type=Path, help="also write every figure (and each shape's) here")
    args = parser.parse_args(argv)
    seeds = SPLITS[args.split]
    if not 1 <= args.shapes <= len(seeds):
        parser.error(f"--shapes {args.shapes}: the {args.split} split has seeds for 1 to {len(seeds):,} shapes")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give 1 or more processes")
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file; give the nano.safetensors that training wrote")
    seeds = seeds[: args.shapes]
    torch.set_num_threads(args.threads)

    print(f"scoring {args.weights.name} on {args.shapes} {args.split} shapes (seeds {seeds[0]:,} to {seeds[-1]:,}), grid {args.grid}")
    figures = score_seeds(args.weights, seeds, args.grid, args.workers)
    print(f"mean IoU            {figures['mean_iou']:.3f}  (95% interval {interval(figures['iou_interval'], 3)}, "
          f"percentile bootstrap over shapes; median {figures['median_iou']:.3f})")
    print(f"mean Chamfer        {figures['mean_chamfer']:.4f}  (95% interval {interval(figures['chamfer_interval'], 4)}; "
          f"scene units, the object spans 1.0; {figures['no_surface']} predictions without a surface left out)")
    print(f"mean colour error   {figures['mean_color_error']:.3f}  (mean |RGB| difference, 0..1)")
    print("\n| kind | shapes | mean IoU | 95% interval | mean Chamfer |\n|---|---|---|---|---|")
    for name, kind in figures["by_kind"].items():
        print(f"| {name} | {kind['shapes']} | {kind['mean_iou']:.3f} | {interval(kind['iou_interval'], 2)} | {kind['mean_chamfer']:.4f} |")
    print()
    if args.timing_runs:
        figures["timing"] = time_pipeline(args.weights, seeds, args.timing_runs, args.timing_grid)
        t = figures["timing"]
        print(f"picture -> coloured mesh at grid {t['grid']}: median {t['median_seconds']:.2f} s, max {t['max_seconds']:.2f} s "
              f"over {t['runs']} runs ({t['threads']} threads; first run with loading {t['first_run_seconds']:.2f} s; "
              f"{t['mean_faces']} faces)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
