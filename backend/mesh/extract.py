"""From a signed distance field to a finished Mesh: grid, marching cubes, clean-up, decimation, colours.

Coordinates stay in the field's own frame unless ``axes`` asks for a permutation; see
docs/mesh.md for the frames each model family uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import cleanup
from .grid import DEFAULT_CHUNK_POINTS, FieldFn, ProgressFn, chunk_points_for_budget, grid_chunks, query_points, sample_grid
from .types import Mesh

DEFAULT_RESOLUTION = 384
DEFAULT_BOUND = 0.6
DEFAULT_MAX_FACES = 120_000
DEFAULT_MIN_COMPONENT_RATIO = 0.005
# Smoothing passes after vertex clustering, as Hunyuan3D-1 finishes its meshes.
CLUSTER_SMOOTHING_PASSES = 2
POST_STEPS = 4  # marching cubes, clean-up, decimation, colours


def marching_cubes(
    grid: np.ndarray, bound: float, *, level: float = 0.0, inside_negative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Lewiner marching cubes (scikit-image) at ``level``; vertices in the grid's coordinates.

    Faces come out counter-clockwise seen from outside, whichever sign convention the field uses.
    """
    from skimage.measure import marching_cubes as skimage_marching_cubes

    volume = grid if inside_negative else -grid
    iso = level if inside_negative else -level
    if not (volume.min() < iso < volume.max()):
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int32)
    vertices, faces, _, _ = skimage_marching_cubes(volume, iso, method="lewiner", allow_degenerate=False)
    spacing = 2.0 * bound / (grid.shape[0] - 1)
    vertices = (vertices * spacing - bound).astype(np.float32)
    return vertices, faces.astype(np.int32)


def permute_axes(vertices: np.ndarray, faces: np.ndarray, axes: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Output column k takes input axis ``axes[k]``; an odd permutation flips the winding to keep faces outward."""
    if sorted(axes) != [0, 1, 2]:
        raise ValueError(f"axes must be a permutation of (0, 1, 2), got {axes}")
    if tuple(axes) == (0, 1, 2):
        return vertices, faces
    inversions = sum(1 for i in range(3) for j in range(i + 1, 3) if axes[i] > axes[j])
    vertices = np.ascontiguousarray(vertices[:, list(axes)])
    if inversions % 2:
        faces = np.ascontiguousarray(faces[:, ::-1])
    return vertices, faces


def mesh_from_grid(
    grid: np.ndarray,
    bound: float = DEFAULT_BOUND,
    *,
    color_fn: FieldFn | None = None,
    level: float = 0.0,
    inside_negative: bool = True,
    max_faces: int = DEFAULT_MAX_FACES,
    min_component_ratio: float = DEFAULT_MIN_COMPONENT_RATIO,
    cluster_size: float = 0.0,
    axes: tuple[int, int, int] = (0, 1, 2),
    chunk_points: int = DEFAULT_CHUNK_POINTS,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
    progress_total: int = POST_STEPS,
    check_cancelled: Callable[[], None] | None = None,
) -> Mesh:
    """Turn a sampled field into a clean, decimated, optionally coloured Mesh.

    Args:
        grid: float (R, R, R) samples over [-bound, bound]^3, array axis k = coordinate k.
        color_fn: maps float32 (P, 3) points (field frame, on ``device``) to (P, 3) RGB in [0, 1].
        inside_negative: True for the NeuS convention (negative inside, positive outside);
            False for occupancy-like fields that are positive inside.
        min_component_ratio: disconnected pieces with fewer faces than this share of the
            total are removed as floaters.
        cluster_size: when positive, Hunyuan3D-1's finish instead: vertices are clustered on a
            grid of this size (``cleanup.cluster_vertices``) and averaged with their neighbours
            twice, and floaters are kept.
        axes: output axis k is field axis ``axes[k]``; (1, 2, 0) turns a Z-up field into Y-up.
        progress_offset/progress_total: where these steps sit in the caller's progress count.
    """
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise ValueError(f"grid must be a cube (R, R, R), got shape {grid.shape}")
    if max_faces < 4:
        raise ValueError(f"max_faces must be at least 4, got {max_faces}")

    def step(done: int) -> None:
        if progress is not None:
            progress(progress_offset + done, progress_total)
        if check_cancelled is not None:
            check_cancelled()

    vertices, faces = marching_cubes(grid, bound, level=level, inside_negative=inside_negative)
    step(1)
    vertices, faces = cleanup.remove_degenerate_faces(vertices, faces)
    if cluster_size > 0:
        vertices, faces = cleanup.cluster_vertices(vertices, faces, cluster_size)
        vertices = cleanup.average_neighbours(vertices, faces, CLUSTER_SMOOTHING_PASSES)
    else:
        vertices, faces = cleanup.remove_small_components(vertices, faces, min_component_ratio)
    step(2)
    vertices, faces = cleanup.decimate(vertices, faces, max_faces)
    vertices, faces = cleanup.remove_degenerate_faces(vertices, faces)
    step(3)
    colors = None
    if color_fn is not None and len(vertices):
        colors = np.clip(query_points(color_fn, vertices, chunk_points=chunk_points, device=device).reshape(-1, 3), 0.0, 1.0)
    vertices, faces = permute_axes(vertices, faces, axes)
    normals = cleanup.vertex_normals(vertices, faces)
    step(4)
    return Mesh(positions=vertices, faces=faces, colors=colors, normals=normals)


def extract_mesh(
    sdf_fn: FieldFn,
    color_fn: FieldFn | None = None,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    bound: float = DEFAULT_BOUND,
    max_faces: int = DEFAULT_MAX_FACES,
    chunk_points: int | None = None,
    memory_budget: int | None = None,
    bytes_per_point: int = 4096,
    device: torch.device | str = "cpu",
    level: float = 0.0,
    inside_negative: bool = True,
    min_component_ratio: float = DEFAULT_MIN_COMPONENT_RATIO,
    cluster_size: float = 0.0,
    axes: tuple[int, int, int] = (0, 1, 2),
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> Mesh:
    """Sample ``sdf_fn`` on a grid over [-bound, bound]^3 and build the finished mesh.

    Progress counts one step per grid chunk and four for the steps after it; cancellation is
    checked before every chunk and after every later step.

    Args:
        sdf_fn: float32 (P, 3) points on ``device`` -> (P,) or (P, 1) signed distances.
        color_fn: same points -> (P, 3) RGB in [0, 1], queried at the final vertices; None for no colours.
        resolution: grid samples per axis (384 upstream).
        bound: half the cube's side (0.6 upstream).
        max_faces: decimation target (120000 upstream for vertex-coloured output).
        chunk_points: points per field call; wins over ``memory_budget``.
        memory_budget: bytes one chunk may use; the chunk is ``memory_budget // bytes_per_point``.
        bytes_per_point: the field's working memory per point, for ``memory_budget``.
        Other arguments as in ``mesh_from_grid``.
    """
    if chunk_points is None:
        chunk_points = chunk_points_for_budget(memory_budget, bytes_per_point) if memory_budget else DEFAULT_CHUNK_POINTS
    total = len(grid_chunks(resolution, chunk_points)) + POST_STEPS
    grid = sample_grid(
        sdf_fn,
        resolution,
        bound,
        chunk_points=chunk_points,
        device=device,
        progress=progress,
        progress_total=total,
        check_cancelled=check_cancelled,
    )
    return mesh_from_grid(
        grid,
        bound,
        color_fn=color_fn,
        level=level,
        inside_negative=inside_negative,
        max_faces=max_faces,
        min_component_ratio=min_component_ratio,
        cluster_size=cluster_size,
        axes=axes,
        chunk_points=chunk_points,
        device=device,
        progress=progress,
        progress_offset=total - POST_STEPS,
        progress_total=total,
        check_cancelled=check_cancelled,
    )
