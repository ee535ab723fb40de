"""Find where a trained Nano model's surface lies, and keep it with the weights.

    python -m backend.pipelines.nano.calibrate --weights backend/pipelines/nano/weights/nano.safetensors

A field's zero level need not be where it scores best: a sign loss that weighs inside points
up, for one, leaves it a little outside the true surface and shapes come out fat. This step
scores the model's volumetric IoU on validation shapes (``data.CALIBRATION_SEEDS``) with the
surface at each of a range of levels, keeps the best in the weights' config, and every query
after that reports distances relative to it. The training command runs it at the end; this
command runs it on an existing weights file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .checkpoint import BUNDLED_WEIGHTS, load_model, save_weights
from .data import BOUND, CALIBRATION_SEEDS, aligned_shape
from .evaluate import PredictedField
from .metrics import FieldFn, grid_points, sample_field, volumetric_iou
from .model import NanoModel
from .shapes import Shape

LEVELS = tuple(round(0.0025 * k, 4) for k in range(-12, 13))  # -0.03 .. 0.03


def surface_level_scores(predicted_sdf: Callable[[Shape, float], FieldFn], seeds: Sequence[int], resolution: int = 64,
                         bound: float = BOUND) -> dict[float, float]:
    """Mean IoU over ``seeds`` with the surface at each of ``LEVELS``.

    ``predicted_sdf(shape, elevation)`` is the field predicted from that shape's picture; a level
    is subtracted from it, so a positive level moves the surface outwards.
    """
    points = grid_points(resolution, bound)
    totals = dict.fromkeys(LEVELS, 0.0)
    for seed in seeds:
        shape, _, elevation = aligned_shape(seed)
        predicted = sample_field(predicted_sdf(shape, elevation), points)
        true = shape.sdf(points)
        for level in LEVELS:
            totals[level] += volumetric_iou(predicted - level, true)
    return {level: total / len(seeds) for level, total in totals.items()}


def best_level(scores: dict[float, float]) -> float:
    """The best-scoring level; among near-equals (within 0.001 IoU) the one closest to the current surface."""
    best = max(scores.values())
    return min((level for level, score in scores.items() if score >= best - 0.001), key=abs)


def calibrate(model: NanoModel, shapes: int, log=print) -> dict:
    """Move the model's surface level to the best of ``LEVELS`` on ``shapes`` validation shapes; returns the record."""
    model.eval()
    scores = surface_level_scores(lambda shape, elevation: PredictedField(model, shape, elevation).sdf,
                                  CALIBRATION_SEEDS[:shapes], bound=model.config.bound)
    shift = best_level(scores)
    before = model.config.surface_level
    model.set_surface_level(before + shift)
    log(f"surface level {before:+.4f} -> {model.config.surface_level:+.4f}: validation IoU on {shapes} shapes "
        f"{scores[0.0]:.3f} -> {scores[shift]:.3f}")
    return {"shapes": shapes, "level": model.config.surface_level, "iou_before": round(scores[0.0], 4),
            "iou_after": round(scores[shift], 4), "scores": {f"{level:+.4f}": round(score, 4) for level, score in scores.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m backend.pipelines.nano.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS, help="nano.safetensors to calibrate (rewritten in place)")
    parser.add_argument("--shapes", type=int, default=100, help="validation shapes to score")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if not 1 <= args.shapes <= len(CALIBRATION_SEEDS):
        parser.error(f"--shapes {args.shapes}: give 1 to {len(CALIBRATION_SEEDS):,} validation shapes")
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file; give the nano.safetensors that training wrote")
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    record = calibrate(model, args.shapes)
    save_weights(model, args.weights)
    run_record = args.weights.with_suffix(".json")
    if run_record.is_file():
        run = json.loads(run_record.read_text())
        run.update(calibration=record, config=model.config.to_dict())
        run_record.write_text(json.dumps(run, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
