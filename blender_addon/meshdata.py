"""Mesh payloads from the backend, made ready for Blender's bulk setters.

numpy only, no bpy: the reader thread runs this, so the main thread receives arrays it
can hand straight to ``foreach_set``, edges included: with the edges given, Blender has
nothing left to compute when the mesh is created (finding the edges was most of the import's
main-thread time).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from .backend.colors import srgb_to_linear


@dataclass(frozen=True)
class MeshArrays:
    """A triangle mesh in Blender's frame (Z up), laid out as Blender stores it.

    Args:
        positions: float32 (N, 3), C-contiguous.
        corner_verts: int32 (3 * M,), the vertex of each face corner.
        edge_verts: int32 (E, 2), each edge's two vertices, each edge once.
        corner_edges: int32 (3 * M,), the edge from each corner's vertex to the next corner's.
        face_starts: int32 (M,), the first corner of each face.
        colors: float32 (N, 4) linear RGBA per vertex, or None.
        corner_uvs: float32 (3 * M, 2), each face corner's UV (Blender's UV map layout), or None.
        textures: encoded pictures (PNG) by material slot (``base_color``), for ``corner_uvs``.
    """

    positions: np.ndarray
    corner_verts: np.ndarray
    edge_verts: np.ndarray
    corner_edges: np.ndarray
    face_starts: np.ndarray
    colors: np.ndarray | None = None
    corner_uvs: np.ndarray | None = None
    textures: dict[str, bytes] = field(default_factory=dict)

    @property
    def vertex_count(self) -> int:
        return len(self.positions)

    @property
    def face_count(self) -> int:
        return len(self.corner_verts) // 3


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes, name: str = "texture") -> tuple[int, int]:
    """(width, height) from a PNG's header, so Blender's image can be made at its size before the bytes are packed in."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError(f"{name} is not a PNG picture")
    width, height = struct.unpack(">II", data[16:24])
    if not width or not height:
        raise ValueError(f"{name} has no pixels")
    return width, height


def triangle_edges(corner_verts: np.ndarray, vertex_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The edge table of a triangle mesh as Blender stores it: (edge_verts, corner_edges)."""
    following = corner_verts.reshape(-1, 3)[:, (1, 2, 0)].reshape(-1)
    low = np.minimum(corner_verts, following).astype(np.int64)
    high = np.maximum(corner_verts, following).astype(np.int64)
    keys, corner_edges = np.unique(low * max(vertex_count, 1) + high, return_inverse=True)
    edge_verts = np.empty((len(keys), 2), dtype=np.int32)
    np.floor_divide(keys, max(vertex_count, 1), out=edge_verts[:, 0], casting="unsafe")
    np.remainder(keys, max(vertex_count, 1), out=edge_verts[:, 1], casting="unsafe")
    return edge_verts, corner_edges.astype(np.int32).reshape(-1)


@dataclass(frozen=True)
class MeshInput:
    """A scene object's mesh to send with a job (Texture Selected), in the backend's frame (Y up).

    Args:
        positions: float32 (N, 3), object space.
        faces: int32 (M, 3), triangles.
        object_name: the object it came from; the result takes its place.
    """

    positions: np.ndarray
    faces: np.ndarray
    object_name: str


def to_wire(positions_z_up: np.ndarray, triangles: np.ndarray, object_name: str) -> MeshInput:
    """A mesh read from Blender (Z up) as the backend takes it: (x, y, z) -> (x, z, -y), the inverse of ``from_wire``'s mapping."""
    positions = np.asarray(positions_z_up, dtype=np.float32).reshape(-1, 3)
    y_up = np.empty_like(positions)
    y_up[:, 0] = positions[:, 0]
    y_up[:, 1] = positions[:, 2]
    np.negative(positions[:, 1], out=y_up[:, 2])
    return MeshInput(y_up, np.ascontiguousarray(triangles, dtype=np.int32).reshape(-1, 3), object_name)


def from_wire(arrays: dict[str, np.ndarray], frame: str = "y_up", textures: dict[str, bytes] | None = None) -> MeshArrays:
    """Turn the ``positions``/``faces``/``colors``/``uvs`` buffers of a result into MeshArrays.

    ``frame`` is the result's ``mesh.frame``; "y_up" (glTF's convention) maps
    (x, y, z) to (x, -z, y), "z_up" is taken as it is. ``textures`` are the result's
    ``texture.<slot>`` pictures; they need ``uvs``.
    """
    positions = np.asarray(arrays["positions"])
    faces = np.asarray(arrays["faces"])
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be (N, 3), got {positions.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (M, 3) triangles, got {faces.shape}")
    n = len(positions)
    if len(faces) and (int(faces.min()) < 0 or int(faces.max()) >= n):
        raise ValueError(f"face indices must lie in [0, {n})")

    if frame == "y_up":
        z_up = np.empty((n, 3), dtype=np.float32)
        z_up[:, 0] = positions[:, 0]
        np.negative(positions[:, 2], out=z_up[:, 1])
        z_up[:, 2] = positions[:, 1]
    elif frame == "z_up":
        z_up = np.ascontiguousarray(positions, dtype=np.float32)
    else:
        raise ValueError(f"unknown mesh frame {frame!r}")

    colors = arrays.get("colors")
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 4):
            raise ValueError(f"colors must be ({n}, 4) RGBA, got {colors.shape}")
        if colors.dtype == np.uint8:
            colors = colors.astype(np.float32) * np.float32(1.0 / 255.0)
        colors = srgb_to_linear(colors)  # the wire carries sRGB; Blender's float colours are linear

    corner_verts = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1)
    uvs = arrays.get("uvs")
    if uvs is not None:
        uvs = np.asarray(uvs)
        if uvs.shape != (n, 2):
            raise ValueError(f"uvs must be ({n}, 2), got {uvs.shape}")
        uvs = np.ascontiguousarray(uvs[corner_verts], dtype=np.float32)
    if textures and uvs is None:
        raise ValueError("the result has textures but no uvs")
    for slot, data in (textures or {}).items():
        png_size(data, slot)
    edge_verts, corner_edges = triangle_edges(corner_verts, n)
    face_starts = np.arange(0, len(corner_verts), 3, dtype=np.int32)
    return MeshArrays(z_up, corner_verts, edge_verts, corner_edges, face_starts, colors, uvs, dict(textures or {}))


def lods_from_wire(arrays: dict[str, np.ndarray], count: int, frame: str = "y_up") -> tuple[MeshArrays, ...]:
    """The result's ``count`` LODs, level 1 first, from its ``lod<k>.positions``/``faces``/``colors`` buffers."""
    levels = []
    for level in range(1, count + 1):
        prefix = f"lod{level}."
        levels.append(from_wire({name[len(prefix):]: array for name, array in arrays.items() if name.startswith(prefix)}, frame))
    return tuple(levels)
