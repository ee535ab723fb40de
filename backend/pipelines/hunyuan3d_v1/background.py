"""Separating the object from its background, then upstream's framing: a 512x512 RGBA picture.

The cut-out comes from the first of these that applies:

1. ``alpha``: the picture's own alpha channel, when it has a meaningful one (some pixels clearly
   transparent, some clearly opaque);
2. ``rembg``: rembg's u2net model, when rembg is installed and the model file is already on
   disk (nothing is downloaded);
3. ``border``: a colour flood fill from the picture's border: pixels connected to the border
   whose colour is close to the border's median colour are background. It works offline on
   any picture shot on a plain backdrop, which is what text-to-image draws here.

Then, as upstream: nearly transparent pixels become transparent white, foreground colours
brighter than 235 in every channel are clamped to 235, the object is cropped to its box,
padded by 15% to a centred square and resized to 512x512.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import BackendError
from ...protocol import ErrorCode

OUTPUT_SIZE = 512
PAD_RATIO = 1.15
TRANSPARENT_BELOW = 16  # alpha under this counts as background
BRIGHT_CLAMP = 235
MASK_THRESHOLD = 0.1  # alpha / 255 above this belongs to the object's box
MEANINGFUL_FRACTION = 0.005  # an alpha channel must make at least this share of pixels each side of half
BORDER_TOLERANCE = 0.12  # colour distance (0..sqrt(3) in unit RGB) still counted as the backdrop
U2NET_MODEL = "u2net"

METHODS = ("auto", "alpha", "rembg", "border", "none")


def has_meaningful_alpha(image: Image.Image) -> bool:
    if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
        return False
    alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    transparent = float(np.mean(alpha < 128))
    return MEANINGFUL_FRACTION <= transparent <= 1 - MEANINGFUL_FRACTION


def u2net_model_path() -> Path:
    """Where rembg keeps its u2net model (its ``U2NET_HOME``, by default ``~/.u2net``)."""
    home = os.environ.get("U2NET_HOME") or Path(os.environ.get("XDG_DATA_HOME", Path.home())) / ".u2net"
    return Path(home).expanduser() / f"{U2NET_MODEL}.onnx"


def rembg_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rembg") is not None and u2net_model_path().is_file()


def remove_with_rembg(image: Image.Image) -> Image.Image:
    import rembg

    session = rembg.new_session(U2NET_MODEL)
    return rembg.remove(image.convert("RGB"), session=session).convert("RGBA")


def remove_by_border_colour(image: Image.Image, tolerance: float = BORDER_TOLERANCE) -> Image.Image:
    """Alpha from a flood fill of the backdrop colour, seeded along the whole border."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    backdrop = np.median(border, axis=0)
    close = np.linalg.norm(rgb - backdrop, axis=-1) < tolerance
    labels, _count = ndimage.label(close)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])
    # Enclosed holes of backdrop colour stay opaque; a one-pixel opening smooths the jagged rim.
    foreground = ndimage.binary_opening(~background, iterations=1)
    alpha = (foreground * 255).astype(np.uint8)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def cut_out(image: Image.Image, method: str = "auto") -> tuple[Image.Image, str]:
    """The picture as RGBA with its background transparent, and which method did it."""
    if method == "auto":
        method = "alpha" if has_meaningful_alpha(image) else "rembg" if rembg_available() else "border"
    if method == "alpha":
        if not has_meaningful_alpha(image):
            raise BackendError(ErrorCode.BAD_INPUT, "the picture has no meaningful alpha channel to keep",
                               hint="use background=auto, or give a picture with a transparent background")
        return image.convert("RGBA"), method
    if method == "rembg":
        if not rembg_available():
            raise BackendError(ErrorCode.BAD_PARAMETER, f"rembg or its {U2NET_MODEL} model is not installed ({u2net_model_path()})",
                               hint='pip install "rembg[cpu]" and run it once online, or use background=auto')
        return remove_with_rembg(image), method
    if method == "border":
        return remove_by_border_colour(image), method
    return image.convert("RGBA"), method


def white_out_background(image: Image.Image) -> Image.Image:
    """Upstream's clean-up: transparent pixels white, very bright foreground toned down to 235."""
    pixels = np.array(image.convert("RGBA"))
    transparent = pixels[..., 3] < TRANSPARENT_BELOW
    bright = ~transparent & np.all(pixels[..., :3] > BRIGHT_CLAMP, axis=-1)
    pixels[transparent] = (255, 255, 255, 0)
    pixels[bright, :3] = BRIGHT_CLAMP
    return Image.fromarray(pixels, "RGBA")


def frame_object(image: Image.Image, size: int = OUTPUT_SIZE, ratio: float = PAD_RATIO) -> Image.Image:
    """Crop to the object's box, pad to a centred square ``ratio`` times its longer side, resize to ``size``."""
    pixels = np.asarray(image.convert("RGBA"))
    mask = pixels[..., 3] / 255.0 > MASK_THRESHOLD
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise BackendError(ErrorCode.BAD_INPUT, "no object was found in the picture (everything is background)",
                           hint="use a picture with one object on a plain background, or set remove_background off")
    # Upstream slices [min:max], leaving out the last row and column of the box.
    crop = pixels[rows.min():max(rows.max(), rows.min() + 1), cols.min():max(cols.max(), cols.min() + 1)]
    height, width = crop.shape[:2]
    side = int(max(height, width) * ratio)
    square = np.zeros((side, side, 4), dtype=np.uint8)
    square[..., :3] = 255
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = crop
    return Image.fromarray(square, "RGBA").resize((size, size), Image.BICUBIC)


def prepare_condition_image(image: Image.Image, method: str = "auto", size: int = OUTPUT_SIZE) -> tuple[Image.Image, str]:
    """Background removal and framing: the 512x512 RGBA picture the multiview model starts from."""
    cut, used = cut_out(image, method)
    return frame_object(white_out_background(cut), size), used
