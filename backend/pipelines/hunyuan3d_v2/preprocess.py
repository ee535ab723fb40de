"""Framing the input picture as Hunyuan3D-2 expects it (upstream's ``ImageProcessorV2``).

The background is removed first by the shared cut-out of Hunyuan3D-1 (the picture's own alpha,
else rembg, else the border colour). Then the object's alpha box is scaled so its longer side
fills ``1 - border_ratio`` of a square as large as the picture's longer side, centred,
composited over white and resized to ``size`` pixels, with the resampling upstream gets from
OpenCV (pixel-area averaging, then bicubic). For 2mv each named view is framed the same way on
its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ...errors import BackendError
from ...protocol import ErrorCode
from .config import VIEW_NAMES, ImageProcessorConfig

if TYPE_CHECKING:
    import torch


def _area_weights(source: int, target: int) -> np.ndarray:
    """[target, source]: the share of each output pixel's footprint lying in each input pixel (OpenCV's INTER_AREA)."""
    scale = source / target
    edges = np.arange(target + 1, dtype=np.float64) * scale
    pixels = np.arange(source, dtype=np.float64)[None]
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    return (np.clip(overlap, 0, None) / scale).astype(np.float32)


def _resize_area(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, C] resized by pixel-area averaging (every channel alike, so alpha never premultiplies colour)."""
    rows = np.tensordot(_area_weights(pixels.shape[0], height), pixels.astype(np.float32), axes=(1, 0))
    out = np.einsum("xw,hwc->hxc", _area_weights(pixels.shape[1], width), rows)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize_bicubic(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] to [size, size, C]: bicubic (a = -0.75, pixel centres aligned, no antialiasing), as OpenCV's INTER_CUBIC."""
    import torch
    import torch.nn.functional as F

    planes = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    out = F.interpolate(planes, size=(size, size), mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def recenter(picture: Image.Image, border_ratio: float) -> np.ndarray:
    """The object centred on a white square (uint8 [S, S, 3], S = the picture's longer side)."""
    pixels = np.asarray(picture.convert("RGBA"))
    alpha = pixels[..., 3]
    side = max(pixels.shape[:2])
    rows, cols = np.nonzero(alpha)
    if rows.size == 0:
        raise BackendError(ErrorCode.BAD_INPUT, "no object was found in the picture (everything is transparent)",
                           hint="use a picture with one object on a plain background, or set remove_background off")
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    # Upstream crops [min:max], leaving out the last row and column of the box.
    height, width = bottom - top, right - left
    if height == 0 or width == 0:
        raise BackendError(ErrorCode.BAD_INPUT, "the object in the picture is a single line of pixels",
                           hint="use a picture where the object is visible, on a plain background")
    crop = pixels[top:bottom, left:right]
    scale = int(side * (1 - border_ratio)) / max(height, width)
    new_height, new_width = int(height * scale), int(width * scale)
    resized = _resize_area(crop, new_width, new_height)
    canvas = np.zeros((side, side, 4), dtype=np.uint8)
    y0, x0 = (side - new_height) // 2, (side - new_width) // 2
    canvas[y0:y0 + new_height, x0:x0 + new_width] = resized
    opacity = canvas[..., 3:4].astype(np.float32) / 255
    # Upstream truncates (astype) rather than rounds after compositing over white.
    return np.clip(canvas[..., :3] * opacity + 255 * (1 - opacity), 0, 255).astype(np.uint8)


def prepare_picture(picture: Image.Image, config: ImageProcessorConfig) -> Image.Image:
    """The framed RGB picture, ``config.size`` pixels square (the input the conditioner sees)."""
    framed = recenter(picture, config.border_ratio)
    return Image.fromarray(_resize_bicubic(framed, config.size), "RGB")


def to_tensor(picture: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] float32 in [-1, 1]."""
    import torch

    pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32).copy())
    return (pixels / 255 * 2 - 1).permute(2, 0, 1)[None]


def order_views(views: dict[str, Image.Image]) -> tuple[list[str], list[int]]:
    """The given view names in slot order (front, left, back, right) and their slot indices; the front is required."""
    unknown = sorted(set(views) - set(VIEW_NAMES))
    if unknown:
        raise BackendError(ErrorCode.BAD_INPUT, f"unknown view name(s) {', '.join(unknown)}", hint="views: " + ", ".join(VIEW_NAMES))
    if "front" not in views:
        raise BackendError(ErrorCode.BAD_INPUT, "the multiview model needs the front view",
                           hint="give the front picture, plus any of the left, back and right views")
    names = [name for name in VIEW_NAMES if name in views]
    return names, [VIEW_NAMES.index(name) for name in names]
