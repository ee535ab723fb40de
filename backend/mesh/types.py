from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import Buffer

MESH_BUFFERS = ("positions", "faces", "colors", "normals")


@dataclass
class Mesh:
    """A triangle mesh with optional per-vertex colours and normals.

    Args:
        positions: float32 (N, 3).
        faces: int32 (M, 3), counter-clockwise seen from outside.
        colors: per-vertex RGBA, sRGB-encoded (like a picture's pixels), float32 in [0, 1] or uint8, (N, 4);
            RGB (N, 3) is widened.
        normals: float32 (N, 3), unit length.
    """

    positions: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32).reshape(-1, 3)
        n = len(self.positions)
        if len(self.faces) and (self.faces.min() < 0 or self.faces.max() >= n):
            raise ValueError(f"face indices must lie in [0, {n}) for {n} vertices")
        if self.colors is not None:
            colors = np.asarray(self.colors)
            if colors.dtype != np.uint8:
                colors = colors.astype(np.float32)
            if colors.ndim != 2 or colors.shape[0] != n or colors.shape[1] not in (3, 4):
                raise ValueError(f"colors must be ({n}, 3) or ({n}, 4), got {colors.shape}")
            if colors.shape[1] == 3:
                alpha = np.full((n, 1), 255 if colors.dtype == np.uint8 else 1.0, dtype=colors.dtype)
                colors = np.concatenate([colors, alpha], axis=1)
            self.colors = np.ascontiguousarray(colors)
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(n, 3)

    @property
    def vertex_count(self) -> int:
        return len(self.positions)

    @property
    def face_count(self) -> int:
        return len(self.faces)

    def colors_uint8(self) -> np.ndarray | None:
        if self.colors is None or self.colors.dtype == np.uint8:
            return self.colors
        return np.round(np.clip(self.colors, 0.0, 1.0) * 255.0).astype(np.uint8)

    def colors_float(self) -> np.ndarray | None:
        if self.colors is None or self.colors.dtype == np.float32:
            return self.colors
        return self.colors.astype(np.float32) / 255.0

    def bounds(self) -> tuple[list[float], list[float]]:
        if not len(self.positions):
            return [0.0] * 3, [0.0] * 3
        return self.positions.min(axis=0).tolist(), self.positions.max(axis=0).tolist()

    def to_buffers(self) -> list[Buffer]:
        """The wire form: raw little-endian arrays, never JSON numbers."""
        out = [Buffer.from_array("positions", self.positions), Buffer.from_array("faces", self.faces)]
        if self.colors is not None:
            out.append(Buffer.from_array("colors", self.colors))
        if self.normals is not None:
            out.append(Buffer.from_array("normals", self.normals))
        return out

    @classmethod
    def from_buffers(cls, buffers: dict[str, Buffer]) -> Mesh:
        arrays = {name: buffers[name].to_array() for name in MESH_BUFFERS if name in buffers}
        return cls(**arrays)
