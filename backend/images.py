"""Decoding input pictures safely: format, byte-size and pixel-count checks before any pixel is decoded.

Every pipeline turns request images into PIL images through ``decode_image``, so a
decompression bomb, a truncated file or a file that is not a picture gets one clear error.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .errors import BackendError
from .protocol import ErrorCode

if TYPE_CHECKING:
    from PIL import Image

MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 x 5000; far beyond what any stage uses (at most 1024 x 1536)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``data`` (an encoded picture) fully, refusing anything oversized, unknown or damaged."""
    picture = open_image(data, name, max_pixels)
    try:
        picture.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BackendError(ErrorCode.BAD_INPUT, f"{name}: the picture is damaged or truncated ({exc})",
                           hint="export it again from your image editor") from None
    return picture


def open_image(data: bytes, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Check format, byte size and pixel count from the header alone (cheap: nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise BackendError(ErrorCode.BAD_INPUT, f"{name}: {len(data) >> 20} MiB is larger than the {MAX_IMAGE_BYTES >> 20} MiB limit",
                           hint="save the picture as a PNG or JPEG of at most a few thousand pixels a side")
    try:
        # Image.open reads only the header, so the size check below happens before decoding.
        picture = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise BackendError(ErrorCode.BAD_INPUT, f"{name}: not a picture this backend can read",
                           hint="use " + ", ".join(ALLOWED_FORMATS)) from None
    width, height = picture.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise BackendError(ErrorCode.BAD_INPUT, f"{name}: {width} x {height} pixels is over the limit of {max_pixels:,}",
                           hint="scale the picture down; the models work at 1024 pixels or less")
    return picture


def encode_png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
