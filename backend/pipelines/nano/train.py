"""Train Nano on procedural shapes, reproducibly, on a CPU.

    python -m backend.pipelines.nano.train --out backend/pipelines/nano/weights

The run is fixed by its flags: the training shapes are the first ``--shapes`` training seeds (``data.TRAINING_SEEDS``), batches and
points are drawn from a generator seeded with ``--seed``, and the length is a step count
(``--max-minutes`` only guards against a machine far slower than expected, and marks the
result as partial). The weights are written every ``--checkpoint-every`` steps and at the
end, with a JSON record of the config, the flags, the time taken and the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .calibrate import calibrate
from .checkpoint import BUNDLED_WEIGHTS, save_weights
from .data import CALIBRATION_SEEDS, COLOR_BAND, IMAGE_SIZE, TRAINING_SEEDS, PointCounts, image_tensor, make_sample
from .evaluate import score_seed
from .model import NanoConfig, NanoModel

SDF_CLAMP = 0.1  # distances beyond this say only "inside" or "outside"
SDF_WEIGHT = 10.0
# The distance loss alone leaves the inside of thin or uncertain parts barely negative (an L1
# fit settles on the median, and most points are outside), so the sign is also trained as
# inside/outside classification; it is what IoU and marching cubes read. Every labelled point
# counts the same: weighing the rarer inside points up moved the surface outwards and scored
# no better once the surface level was calibrated (docs/nano.md). SIGN_SCALE is the distance
# at which the classifier is ~73% sure.
SIGN_WEIGHT = 1.0
SIGN_SCALE = 0.02
DATA_FORMAT = 2  # bump when the data generation changes, so stale caches are not reused


@dataclass
class Dataset:
    """All training samples in memory: uint8 pictures and float16 targets."""

    images: torch.Tensor  # (N, S, S, 4) uint8
    points: torch.Tensor  # (N, P, 3) float16
    sdf: torch.Tensor  # (N, P) float16
    colors: torch.Tensor  # (N, P, 3) uint8
    counts: PointCounts

    def __len__(self) -> int:
        return len(self.images)


def _sample_arrays(seed: int) -> tuple[np.ndarray, ...]:
    torch.set_num_threads(1)
    sample = make_sample(seed)
    return (sample.image, sample.points.astype(np.float16), sample.sdf.astype(np.float16),
            np.round(sample.colors * 255.0).astype(np.uint8))


def build_dataset(shapes: int, workers: int, cache_dir: Path | None, log) -> Dataset:
    """Samples for the first ``shapes`` training seeds, generated in ``workers`` processes, or read from the cache."""
    counts = PointCounts()
    cache = cache_dir / f"nano-data-v{DATA_FORMAT}-{shapes}-{counts.surface}-{counts.near}-{counts.uniform}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        log(f"reading {shapes} samples from the cache")
        arrays = np.load(cache)
        parts = [arrays[k] for k in ("images", "points", "sdf", "colors")]
    else:
        start = time.monotonic()
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = []
            for i, result in enumerate(pool.imap(_sample_arrays, TRAINING_SEEDS[:shapes], chunksize=16)):
                results.append(result)
                if (i + 1) % 1000 == 0:
                    log(f"generated {i + 1}/{shapes} samples ({time.monotonic() - start:.0f} s)")
        parts = [np.stack(column) for column in zip(*results)]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(".partial.npz")
            np.savez(partial, images=parts[0], points=parts[1], sdf=parts[2], colors=parts[3])
            partial.replace(cache)
    return Dataset(*(torch.from_numpy(p) for p in parts), counts=counts)


def draw_batch(data: Dataset, batch_size: int, points_per_sample: int, generator: torch.Generator, device: torch.device):
    """Pictures and an equal share of surface, near and uniform points from random samples, on ``device``."""
    index = torch.randint(len(data), (batch_size,), generator=generator)
    share = points_per_sample // 3
    counts = data.counts
    ranges = ((0, counts.surface), (counts.surface, counts.near), (counts.surface + counts.near, counts.uniform))
    picks = torch.cat(
        [start + torch.randint(size, (batch_size, share if k < 2 else points_per_sample - 2 * share), generator=generator)
         for k, (start, size) in enumerate(ranges)],
        dim=1,
    )
    rows = index[:, None]
    return (
        image_tensor(data.images[index]).to(device),
        data.points[rows, picks].to(device).float(),
        data.sdf[rows, picks].to(device).float(),
        data.colors[rows, picks].to(device).float() / 255.0,
    )


def loss_terms(model: NanoModel, images, points, sdf, colors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clamped L1 distance loss, inside/outside classification loss, and colour L1 near the surface."""
    predicted_sdf, predicted_rgb = model(images, points)
    sdf_loss = (predicted_sdf.clamp(-SDF_CLAMP, SDF_CLAMP) - sdf.clamp(-SDF_CLAMP, SDF_CLAMP)).abs().mean()
    labelled = (sdf.abs() > 1e-3).float()  # points on the surface have no side
    inside = (sdf < 0).float()
    sign_loss = (F.binary_cross_entropy_with_logits(-predicted_sdf / SIGN_SCALE, inside, reduction="none") * labelled).sum() \
        / labelled.sum().clamp_min(1.0)
    near = (sdf.abs() < COLOR_BAND).float()
    color_loss = ((predicted_rgb - colors).abs().mean(dim=-1) * near).sum() / near.sum().clamp_min(1.0)
    return sdf_loss, sign_loss, color_loss


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def validate(model: NanoModel, seeds: list[int], resolution: int = 48) -> dict[str, float]:
    """Mean IoU, Chamfer distance and colour error on validation shapes."""
    model.eval()
    scores = [score_seed(model, seed, resolution, chamfer_points=4000)[1] for seed in seeds]
    model.train()
    return {
        "iou": float(np.mean([s.iou for s in scores])),
        "chamfer": float(np.mean([s.chamfer for s in scores if np.isfinite(s.chamfer)] or [np.inf])),
        "color_error": float(np.mean([s.color_error for s in scores])),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backend.pipelines.nano.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_WEIGHTS.parent, help="folder for nano.safetensors and nano.json")
    parser.add_argument("--steps", type=int, default=20000, help="optimizer steps (the run's length)")
    parser.add_argument("--shapes", type=int, default=10000, help="training shapes: the first this many training seeds (data.TRAINING_SEEDS)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--points", type=int, default=2048, help="query points per picture per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay after warm-up)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights' initialisation and of batch drawing")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and data generation")
    parser.add_argument("--device", default="cpu",
                        help="where the steps run: cpu (the reference), or e.g. cuda; samples are drawn by the same generator either way")
    parser.add_argument("--cache-dir", type=Path, help="keep the generated samples here and reuse them (default: none)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="write the weights every this many steps")
    parser.add_argument("--validation-shapes", type=int, default=24, help="validation shapes scored at each checkpoint")
    parser.add_argument("--calibration-shapes", type=int, default=100,
                        help="validation shapes that place the surface level at the end (0 skips it; see calibrate.py)")
    parser.add_argument("--max-minutes", type=float, help="stop early after this long and mark the result partial")
    parser.add_argument("--config", type=json.loads, default={}, help='model config overrides as JSON, e.g. \'{"hidden_dim": 96}\'')
    args = parser.parse_args(argv)
    if not 1 <= args.shapes <= len(TRAINING_SEEDS):
        parser.error(f"--shapes {args.shapes}: there are training seeds for 1 to {len(TRAINING_SEEDS):,} shapes")
    for flag in ("validation_shapes", "calibration_shapes"):
        if not 0 <= getattr(args, flag) <= len(CALIBRATION_SEEDS):
            parser.error(f"--{flag.replace('_', '-')}: give 0 to {len(CALIBRATION_SEEDS):,} shapes")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a torch device name; use cpu, cuda, cuda:1 or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build sees no CUDA GPU; leave --device out to train on the CPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        parser.error(f"--device {args.device}: this torch build has no Apple GPU (MPS); leave --device out to train on the CPU")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.0f} s] {message}", flush=True)

    config = NanoConfig.from_dict({**NanoConfig().to_dict(), **args.config, "image_size": IMAGE_SIZE})
    device = torch.device(args.device)
    model = NanoModel(config).to(device)
    log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    data = build_dataset(args.shapes, args.threads, args.cache_dir, log)
    data_seconds = time.monotonic() - started
    log(f"data ready: {len(data)} samples")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    validation_seeds = list(CALIBRATION_SEEDS[: args.validation_shapes])
    record = {
        "config": config.to_dict(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "cache_dir")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_seconds": round(data_seconds, 1),
        "history": [],
    }
    running = {"sdf": 0.0, "sign": 0.0, "color": 0.0, "n": 0}
    step = 0

    def write_outputs() -> None:
        save_weights(model, args.out / "nano.safetensors")
        (args.out / "nano.json").write_text(json.dumps(record, indent=1) + "\n")

    model.train()
    train_started = time.monotonic()
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        sdf_loss, sign_loss, color_loss = loss_terms(model, *draw_batch(data, args.batch_size, args.points, generator, device))
        optimizer.zero_grad(set_to_none=True)
        (SDF_WEIGHT * sdf_loss + SIGN_WEIGHT * sign_loss + color_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        running["sdf"] += sdf_loss.item()
        running["sign"] += sign_loss.item()
        running["color"] += color_loss.item()
        running["n"] += 1
        out_of_time = args.max_minutes is not None and time.monotonic() - started > 60.0 * args.max_minutes
        if step % 50 == 0 or step == args.steps or out_of_time:
            elapsed = time.monotonic() - train_started
            entry = {"step": step, **{f"{k}_loss": running[k] / running["n"] for k in ("sdf", "sign", "color")}}
            log(f"step {step}/{args.steps} sdf {entry['sdf_loss']:.4f} sign {entry['sign_loss']:.4f} "
                f"colour {entry['color_loss']:.4f} ({step / elapsed:.2f} steps/s)")
            running = {"sdf": 0.0, "sign": 0.0, "color": 0.0, "n": 0}
            record["history"].append(entry)
            if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
                entry["validation"] = validate(model, validation_seeds)
                log(f"validation on {len(validation_seeds)} shapes: {entry['validation']}")
                record.update(steps_done=step, partial=step < args.steps, train_seconds=round(time.monotonic() - train_started, 1),
                              total_seconds=round(time.monotonic() - started, 1), validation=entry["validation"])
                write_outputs()
        if out_of_time:
            log(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            break
    if args.calibration_shapes:
        record["calibration"] = calibrate(model, args.calibration_shapes, log)
        record.update(config=model.config.to_dict(), total_seconds=round(time.monotonic() - started, 1))
        write_outputs()
    log(f"done: {step} steps in {time.monotonic() - started:.0f} s")
    return record


if __name__ == "__main__":
    main()
