"""UV unwrapping with xatlas and rasterization in UV space (texel -> face, position, normal).

UV convention: u runs left to right, v bottom to top, and texel (row r, column c) of an S x S
texture has its centre at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S, so row 0 is the top of the
image as glTF and Blender sample it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .raster import MAX_CANDIDATES, Raster, rasterize


@dataclass
class UVMesh:
    """A mesh split along UV seams: ``source_vertex`` maps each vertex back to the input mesh."""

    positions: np.ndarray      # [V', 3] float32
    faces: np.ndarray          # [F, 3] int64, same face order as the input
    uvs: np.ndarray            # [V', 2] float32 in [0, 1]
    source_vertex: np.ndarray  # [V'] int64


def check_mesh(positions: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 [V, 3], int64 [F, 3]) or raise ValueError saying what is wrong."""
    positions = np.asarray(positions)
    faces = np.asarray(faces)
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] == 0:
        raise ValueError(f"positions must be a non-empty [V, 3] array, got shape {positions.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces must be a non-empty [F, 3] array of vertex indices (triangulate first), got shape {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must hold integer vertex indices, got dtype {faces.dtype}")
    if not np.isfinite(positions).all():
        raise ValueError("positions hold NaN or infinite values; clean the mesh before texturing")
    if faces.min() < 0 or faces.max() >= positions.shape[0]:
        raise ValueError(f"face indices must lie in [0, {positions.shape[0] - 1}], got [{faces.min()}, {faces.max()}]")
    return positions.astype(np.float32), faces.astype(np.int64)


def unwrap(positions: np.ndarray, faces: np.ndarray, texture_size: int = 2048, padding: int = 2,
           check_cancelled: Callable[[], None] | None = None) -> UVMesh:
    """Cut the mesh into charts and pack them for a ``texture_size`` texture, ``padding`` texels apart.

    xatlas runs in a child process (``atlas.parametrize``): the server's threads keep running, and
    ``check_cancelled`` (polled while it works) can stop it at once.
    """
    from .atlas import parametrize

    positions, faces = check_mesh(positions, faces)
    source_vertex, uv_faces, uvs = parametrize(positions, faces.astype(np.uint32), texture_size, padding, check_cancelled)
    if uv_faces.shape[0] != faces.shape[0]:
        raise ValueError(f"xatlas kept {uv_faces.shape[0]} of {faces.shape[0]} faces; remove degenerate faces first")
    source_vertex = source_vertex.astype(np.int64)
    return UVMesh(positions[source_vertex], uv_faces.astype(np.int64), uvs.astype(np.float32), source_vertex)


@dataclass
class TexelMaps:
    """Per texel: the raster in UV space, the 3D position and the unit normal it carries."""

    raster: Raster
    position: torch.Tensor  # [S, S, 3]
    normal: torch.Tensor    # [S, S, 3]

    @property
    def mask(self) -> torch.Tensor:
        return self.raster.mask


def uv_to_pixels(uvs: torch.Tensor, size: int) -> torch.Tensor:
    return torch.stack([uvs[:, 0] * size - 0.5, (1 - uvs[:, 1]) * size - 0.5], dim=-1)


def rasterize_uv(positions: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, normals: torch.Tensor,
                 size: int, max_candidates: int = MAX_CANDIDATES) -> TexelMaps:
    """Rasterize the UV layout at ``size`` squared; positions, uvs and normals are per vertex."""
    faces = faces.to(device=positions.device, dtype=torch.long)
    raster = rasterize(uv_to_pixels(uvs.to(positions.device), size), faces, size, size, max_candidates=max_candidates)
    normal = torch.nn.functional.normalize(raster.interpolate(normals, faces), dim=-1)
    return TexelMaps(raster, raster.interpolate(positions, faces), normal)
