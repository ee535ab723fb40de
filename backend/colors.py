"""Colour encoding. Numpy only: the Blender add-on imports this file from its bundled backend.

Meshes carry sRGB-encoded colours (what a picture's pixels hold and what the models predict).
glTF's COLOR_0 and Blender's colour attributes hold linear values, so exporters and the
importer convert with ``srgb_to_linear``.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(rgba: np.ndarray) -> np.ndarray:
    """float32 RGBA in [0, 1], sRGB-encoded -> linear; alpha is left as it is."""
    out = np.array(rgba, dtype=np.float32, copy=True)
    rgb = np.clip(out[..., :3], 0.0, 1.0)
    out[..., :3] = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return out
