"""Sampling a signed distance function on a regular grid, chunk by chunk.

The grid covers the cube [-bound, bound]^3 with ``resolution`` samples per axis, both ends
included (sample i sits at -bound + i * 2 * bound / (resolution - 1)). Array axis k is
coordinate k: ``grid[i, j, k]`` is the value at (x_i, y_j, z_k).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

FieldFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]

DEFAULT_CHUNK_POINTS = 1 << 20
MIN_CHUNK_POINTS = 1 << 12


def chunk_points_for_budget(budget_bytes: int, bytes_per_point: int) -> int:
    """How many points one query may hold when each costs ``bytes_per_point`` of working memory.

    Args:
        budget_bytes: memory the caller can spare for one chunk (activations, not weights).
        bytes_per_point: the field's peak working memory per query point, measured or estimated.
    """
    if budget_bytes <= 0 or bytes_per_point <= 0:
        raise ValueError(f"budget_bytes and bytes_per_point must be positive, got {budget_bytes} and {bytes_per_point}")
    return max(MIN_CHUNK_POINTS, budget_bytes // bytes_per_point)


def grid_axis(resolution: int, bound: float) -> np.ndarray:
    """The sample coordinates along one axis, float32."""
    return np.linspace(-bound, bound, resolution, dtype=np.float64).astype(np.float32)


def grid_chunks(resolution: int, chunk_points: int) -> list[tuple[int, int]]:
    """[start, end) ranges over the flattened (x, y, z) C-order grid, each at most ``chunk_points`` long."""
    total = resolution**3
    return [(start, min(start + chunk_points, total)) for start in range(0, total, chunk_points)]


def sample_grid(
    field: FieldFn,
    resolution: int,
    bound: float,
    *,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    progress_total: int | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> np.ndarray:
    """Evaluate ``field`` at every grid sample; returns float32 (resolution,) * 3 on the host.

    Points are generated on ``device`` one chunk at a time, so peak memory is the grid itself
    (4 bytes a sample) plus one chunk of points and whatever ``field`` needs for them.

    Args:
        field: maps float32 (P, 3) points on ``device`` to (P,) or (P, 1) values, any float dtype.
        chunk_points: points per call of ``field``.
        progress: called with (chunk number, progress_total) after each chunk.
        progress_total: the total to report; defaults to the number of chunks.
        check_cancelled: called before each chunk; raises to stop.
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    if chunk_points < 1:
        raise ValueError(f"chunk_points must be positive, got {chunk_points}")
    device = torch.device(device)
    axis = torch.from_numpy(grid_axis(resolution, bound)).to(device)
    plane = resolution * resolution
    values = np.empty(resolution**3, dtype=np.float32)
    chunks = grid_chunks(resolution, chunk_points)
    total = progress_total if progress_total is not None else len(chunks)
    with torch.inference_mode():
        for number, (start, end) in enumerate(chunks, 1):
            if check_cancelled is not None:
                check_cancelled()
            index = torch.arange(start, end, device=device)
            points = torch.stack(
                [axis[index // plane], axis[(index // resolution) % resolution], axis[index % resolution]], dim=1
            )
            result = field(points).reshape(-1)
            if result.shape[0] != end - start:
                raise ValueError(f"the field returned {result.shape[0]} values for {end - start} points")
            values[start:end] = result.float().cpu().numpy()
            del index, points, result
            if progress is not None:
                progress(number, total)
    return values.reshape(resolution, resolution, resolution)


def query_points(
    field: FieldFn,
    points: np.ndarray,
    *,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Evaluate ``field`` at arbitrary (N, 3) points in chunks; returns float32 (N, ...) on the host."""
    device = torch.device(device)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(points), chunk_points):
            chunk = torch.from_numpy(np.ascontiguousarray(points[start : start + chunk_points], dtype=np.float32)).to(device)
            outputs.append(field(chunk).float().cpu().numpy())
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outputs, axis=0)
