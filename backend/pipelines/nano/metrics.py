"""Shape and colour figures of a prediction against a ``Shape``'s ground truth.

Volumetric IoU compares inside/outside on a grid over the model's cube. Chamfer distance
compares points on the two surfaces (marching cubes on the same grid, then sampled on the
triangles). Colour error is the mean absolute RGB difference at points on the true surface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .shapes import Shape

FieldFn = Callable[[torch.Tensor], torch.Tensor]


def grid_points(resolution: int, bound: float) -> torch.Tensor:
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def sample_field(fn: FieldFn, points: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(points[i : i + chunk]) for i in range(0, len(points), chunk)])


def volumetric_iou(predicted_sdf: torch.Tensor, true_sdf: torch.Tensor) -> float:
    predicted, true = predicted_sdf < 0, true_sdf < 0
    union = (predicted | true).sum().item()
    return (predicted & true).sum().item() / union if union else 1.0


def surface_samples(sdf_grid: np.ndarray, bound: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Points spread over the zero level set of a cubic grid, by area; empty when there is no surface."""
    from skimage.measure import marching_cubes

    if not (sdf_grid.min() < 0.0 < sdf_grid.max()):
        return np.zeros((0, 3), dtype=np.float32)
    vertices, faces, _, _ = marching_cubes(sdf_grid, 0.0)
    vertices = vertices * (2.0 * bound / (sdf_grid.shape[0] - 1)) - bound
    triangles = vertices[faces]
    areas = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    a, b = rng.random((2, count, 1))
    flip = a + b > 1.0
    a, b = np.where(flip, 1.0 - a, a), np.where(flip, 1.0 - b, b)
    t = triangles[chosen]
    return (t[:, 0] + a * (t[:, 1] - t[:, 0]) + b * (t[:, 2] - t[:, 0])).astype(np.float32)


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the two average nearest-neighbour distances (L2, in scene units)."""
    from scipy.spatial import cKDTree

    if not len(a) or not len(b):
        return float("inf")
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def bootstrap_interval(values: np.ndarray, level: float = 0.95, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values``: resample them with replacement, take the
    central ``level`` of the resampled means. Seeded, so a set of values always gets the same interval."""
    values = np.asarray(values, dtype=np.float64)
    means = values[np.random.default_rng(seed).integers(len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


@dataclass
class ShapeScores:
    iou: float
    chamfer: float
    color_error: float


def score(
    sdf_fn: FieldFn,
    color_fn: FieldFn,
    shape: Shape,
    *,
    resolution: int = 64,
    bound: float = 0.6,
    surface_points: torch.Tensor | None = None,
    chamfer_points: int = 10000,
    seed: int = 0,
) -> ShapeScores:
    """IoU, Chamfer distance and colour error of predicted fields against ``shape``.

    Args:
        sdf_fn/color_fn: (P, 3) points -> (P,) signed distances / (P, 3) RGB in [0, 1].
        surface_points: points on the true surface for the colour error; the vertices of the
            true surface's marching-cubes mesh when None.
    """
    points = grid_points(resolution, bound)
    predicted = sample_field(sdf_fn, points)
    true = shape.sdf(points)
    rng = np.random.default_rng(seed)
    shape_grid = (resolution,) * 3
    predicted_surface = surface_samples(predicted.reshape(shape_grid).numpy(), bound, chamfer_points, rng)
    true_surface = surface_samples(true.reshape(shape_grid).numpy(), bound, chamfer_points, rng)
    if surface_points is None:
        surface_points = torch.from_numpy(true_surface)
    _, true_colors = shape.sdf_and_color(surface_points)
    predicted_colors = sample_field(color_fn, surface_points)
    return ShapeScores(
        iou=volumetric_iou(predicted, true),
        chamfer=chamfer_distance(predicted_surface, true_surface),
        color_error=float((predicted_colors - true_colors).abs().mean()),
    )


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> np.ndarray:
    """Inside/outside of a closed triangle mesh on the grid of ``grid_points``, by ray parity.

    A ray along +x leaves each (y, z) column of the grid; a grid sample is inside when the
    ray from it crosses the surface an odd number of times. Columns are nudged by a hair so
    rays miss edges and vertices. Returns bool (resolution,) * 3 indexed (x, y, z).
    """
    axis = np.linspace(-bound, bound, resolution)
    column_y, column_z = (a.ravel() for a in np.meshgrid(axis + 1.37e-6, axis - 2.71e-6, indexing="ij"))
    crossings = np.zeros((resolution * resolution, resolution + 1), dtype=np.int64)
    triangles = vertices[faces].astype(np.float64)
    for start in range(0, len(triangles), 256):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (triangles[start : start + 256, k].T for k in range(3))
        det = (y1 - y0) * (z2 - z0) - (y2 - y0) * (z1 - z0)
        usable = np.abs(det) > 1e-14
        det = np.where(usable, det, 1.0)[:, None]
        dy, dz = column_y[None] - y0[:, None], column_z[None] - z0[:, None]
        a = (dy * (z2 - z0)[:, None] - dz * (y2 - y0)[:, None]) / det
        b = ((y1 - y0)[:, None] * dz - (z1 - z0)[:, None] * dy) / det
        hit = usable[:, None] & (a >= 0.0) & (b >= 0.0) & (a + b <= 1.0)
        triangle, column = hit.nonzero()
        x = x0[triangle] + a[triangle, column] * (x1 - x0)[triangle] + b[triangle, column] * (x2 - x0)[triangle]
        np.add.at(crossings, (column, np.searchsorted(axis, x)), 1)
    # Crossings beyond grid sample i are those in bins i+1 and up.
    beyond = np.cumsum(crossings[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return (beyond % 2 == 1).reshape(resolution, resolution, resolution).transpose(2, 0, 1)


def mesh_iou(vertices: np.ndarray, faces: np.ndarray, shape: Shape, resolution: int = 48, bound: float = 0.6) -> float:
    """Volumetric IoU of a closed mesh (in the shape's frame) against the shape."""
    inside = torch.from_numpy(mesh_occupancy(vertices, faces, resolution, bound).reshape(-1))
    true = shape.sdf(grid_points(resolution, bound))
    return volumetric_iou(torch.where(inside, -1.0, 1.0), true)
