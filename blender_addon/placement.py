"""Where a result goes in the scene, decided when its job is asked for, and the arithmetic of putting it there. No bpy.

A ``Placement`` travels with the request (the scene may change while the job runs), so it
names objects and collections rather than holding them. Results are meshes in Blender's
frame with their front towards -Y (the importer maps the backend's front, +Z, there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROW_GAP = 0.25  # previews in a row stand this fraction of the new one's width apart


@dataclass(frozen=True)
class Placement:
    """How to place a result.

    Args:
        how: "cursor" (at the 3D cursor), "row" (next to the previews already in the
            collection made for ``batch``, starting at ``start``), "beside" (in front of the
            object named ``target``, with its rotation and scale: a refined preview) or "into"
            (scaled and placed to fit the box or empty named ``target``).
        target: the object's name for "beside" and "into".
        batch: the previews of one press share it, and so their collection and row.
        start: where a row begins (the 3D cursor when Preview Variations was pressed).
        facing: the horizontal world direction (x, y) the result's front turns towards:
            opposite to the view of the camera that took the input picture; None keeps the
            front at -Y.
    """

    how: str = "cursor"
    target: str = ""
    batch: str = ""
    start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    facing: tuple[float, float] | None = None


def facing_away_from(view_direction: tuple[float, float, float]) -> tuple[float, float] | None:
    """The horizontal direction towards a camera looking along ``view_direction``; None when it looks straight down or up."""
    x, y = -view_direction[0], -view_direction[1]
    length = math.hypot(x, y)
    return (x / length, y / length) if length > 1e-6 else None


def yaw_for(facing: tuple[float, float] | None) -> float:
    """The rotation about Z that turns the front (-Y) towards ``facing``."""
    return 0.0 if facing is None else math.atan2(facing[0], -facing[1])


def rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points.min(axis=0), points.max(axis=0)


def fit_into_box(points: np.ndarray, box_matrix: np.ndarray, box_min: np.ndarray, box_max: np.ndarray,
                 facing: tuple[float, float] | None = None) -> np.ndarray:
    """The world matrix that fits a mesh into a box: the largest uniform scale, centred, resting on the box's bottom.

    ``points`` are the mesh's vertices; ``box_matrix`` (4x4) and the local ``box_min``/``box_max``
    describe the box (a mesh's bounds or an empty's cube); the box may be moved, turned about
    any axis and scaled unevenly (not sheared). The result keeps the box's orientation, turned
    about the box's up axis so its front faces ``facing`` (a world direction) as nearly as it can.
    """
    box_matrix = np.asarray(box_matrix, dtype=np.float64)
    axes = box_matrix[:3, :3]
    scales = np.linalg.norm(axes, axis=0)
    if np.any(scales < 1e-12):
        raise ValueError("the box is flattened to nothing (a scale of 0): give it a size on every axis")
    rotation = axes / scales
    yaw = 0.0
    if facing is not None:
        local = rotation.T @ np.array([facing[0], facing[1], 0.0])
        if math.hypot(local[0], local[1]) > 1e-6:
            yaw = yaw_for((local[0], local[1]))
    turn = rotation_z(yaw)
    low, high = bounds(np.asarray(points, dtype=np.float64).reshape(-1, 3) @ turn.T)
    size = high - low
    room = (np.asarray(box_max, dtype=np.float64) - np.asarray(box_min, dtype=np.float64)) * scales
    usable = size > 1e-12
    if not usable.any():
        raise ValueError("the result has no size to scale")
    scale = float(np.min(room[usable] / size[usable]))
    box_low, box_high = np.asarray(box_min, dtype=np.float64) * scales, np.asarray(box_max, dtype=np.float64) * scales
    target = np.array([(box_low[0] + box_high[0]) / 2, (box_low[1] + box_high[1]) / 2, box_low[2]])
    anchor = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]]) * scale
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ turn * scale
    matrix[:3, 3] = box_matrix[:3, 3] + rotation @ (target - anchor)
    return matrix


def next_in_row(points: np.ndarray, row_max_x: float | None, start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Where a preview goes: at ``start``, or just right (+X) of the row's rightmost extent ``row_max_x``."""
    if row_max_x is None:
        return start
    low, high = bounds(points)
    width = float(high[0] - low[0])
    return (row_max_x + ROW_GAP * width - float(low[0]), start[1], start[2])


def in_front_of(location: tuple[float, float, float], depth: float) -> tuple[float, float, float]:
    """Where a refined preview goes: one preview's depth (and a gap) nearer the front (-Y) than the preview at ``location``."""
    return (location[0], location[1] - depth * (1.0 + ROW_GAP), location[2])
