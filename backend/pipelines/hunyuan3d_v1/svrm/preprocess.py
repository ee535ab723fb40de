"""From pictures to SVRM's input tensors: grid splitting, view order, resizing, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ....errors import BackendError
from ....protocol import ErrorCode
from .cameras import VIEW_AZIMUTHS, svrm_cameras

GRID_ROWS, GRID_COLS = 3, 2
# Grid cell (row * 2 + col) holding each azimuth 0, 60, ..., 300 in the multiview models' output.
STD_VIEW_ORDER = (0, 2, 4, 5, 3, 1)
LITE_VIEW_ORDER = (0, 1, 2, 3, 4, 5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_view_grid(grid: Image.Image, order: Sequence[int] = STD_VIEW_ORDER) -> list[Image.Image]:
    """Cut a 3-row x 2-column grid of square views into the six views, azimuth 0 to 300."""
    width, height = grid.size
    cell = width // GRID_COLS
    if width % GRID_COLS or cell * GRID_ROWS != height:
        raise BackendError(
            ErrorCode.BAD_INPUT,
            f"the views image is {width}x{height}; expected a grid of 3 rows x 2 columns of square views",
            hint="pass the multiview model's output unchanged (1024x1536 for std, 640x960 for lite)",
        )
    cells = [grid.crop((col * cell, row * cell, (col + 1) * cell, (row + 1) * cell)) for row in range(GRID_ROWS) for col in range(GRID_COLS)]
    return [cells[index] for index in order]


def to_rgb_square(image: Image.Image) -> Image.Image:
    """RGB on a white background (where the image has alpha), padded to a centred square with white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32, bicubic-resized and ImageNet-normalised."""
    resized = to_rgb_square(image).resize((size, size), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def prepare_inputs(views: Sequence[Image.Image], condition: Image.Image, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Six views (azimuth 0..300) and the condition image -> images (1, 7, 3, size, size), cameras (1, 7, 20).

    The condition image comes last, with an all-zero camera.
    """
    if len(views) != len(VIEW_AZIMUTHS):
        raise BackendError(ErrorCode.BAD_INPUT, f"SVRM needs {len(VIEW_AZIMUTHS)} views, got {len(views)}")
    images = torch.stack([image_tensor(image, size) for image in [*views, condition]])
    return images[None], svrm_cameras()[None]
