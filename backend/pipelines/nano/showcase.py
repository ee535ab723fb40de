"""Example pictures for Nano and pictures of what it makes of them.

    python -m backend.pipelines.nano.showcase --out examples

For a few validation seeds (never trained on; picked by looking at them, so they are not test
shapes) this writes ``<name>.png``, the picture a user would give (RGBA, transparent
background), and ``results/<name>.png``: the input, then the model's reconstruction and the
true shape, both seen from another angle. ``nano_examples.json`` lists each picture's seed,
from which ``data.aligned_shape`` rebuilds its true shape. The reconstruction is drawn by
sphere tracing the model's own signed distance field, the same field the pipeline's mesh is
extracted from.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import BUNDLED_WEIGHTS, load_model
from .data import COMPARISON_SEEDS, aligned_shape, render_input
from .evaluate import PredictedField
from .render import render

# Validation seeds that show one of each kind of object; the file is named after the shape.
SEEDS = tuple(COMPARISON_SEEDS[k] for k in (6, 10, 17, 22))  # mug, torus, mushroom, snowman
EXAMPLE_SIZE = 256


def straight_alpha(framed: np.ndarray) -> np.ndarray:
    """uint8 premultiplied RGBA -> uint8 straight RGBA, the usual form of a cut-out picture."""
    rgba = framed.astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = np.where(alpha > 0, rgba[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    return np.concatenate([rgb, rgba[..., 3:]], axis=-1).round().clip(0, 255).astype(np.uint8)


def on_white(rgba: torch.Tensor) -> np.ndarray:
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return (rgb.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.pipelines.nano.showcase", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the example pictures (results/ goes inside)")
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS)
    parser.add_argument("--view", type=float, default=50.0, help="azimuth in degrees of the second view")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.weights)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    index = []
    for seed in SEEDS:
        shape, _, elevation = aligned_shape(seed)
        example = straight_alpha(render_input(shape, elevation, EXAMPLE_SIZE))
        buffer = io.BytesIO()
        Image.fromarray(example, "RGBA").save(buffer, format="PNG")
        (args.out / f"{shape.name}.png").write_bytes(buffer.getvalue())
        view = math.radians(args.view)
        predicted = render(PredictedField(model, shape, elevation), math.radians(20.0), EXAMPLE_SIZE, azimuth=view)
        true = render(shape, math.radians(20.0), EXAMPLE_SIZE, azimuth=view)
        given = torch.from_numpy(example.astype(np.float32) / 255.0)
        strip = np.concatenate([on_white(given), on_white(predicted), on_white(true)], axis=1)
        Image.fromarray(strip).save(args.out / "results" / f"{shape.name}.png")
        index.append({"image": f"{shape.name}.png", "result": f"results/{shape.name}.png", "seed": seed, "shape": shape.name})
        print(f"{shape.name}: seed {seed}")
    # The seed gives the ground truth: ``data.aligned_shape(seed)``.
    (args.out / "nano_examples.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
