"""Puts a new result where its request's ``Placement`` says: at the 3D cursor, in a row of previews, in front of
the preview it refines, or fitted into a box or an empty. Main thread only.

The arithmetic is in ``placement`` (no bpy). An object named by a placement that is gone by
the time the result arrives (deleted or renamed while the job ran) leaves the result at the
3D cursor, where the importer put it.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix

from .meshdata import MeshArrays
from .placement import Placement, fit_into_box, in_front_of, next_in_row, rotation_z, yaw_for

PREVIEW_COLLECTION = "Hunyuan3D Previews"
BATCH_PROPERTY = "hunyuan3d_previews"  # on a previews collection: the batch its row belongs to


def place(context: bpy.types.Context, obj: bpy.types.Object, arrays: MeshArrays, placement: Placement | None) -> None:
    """Move ``obj`` (just imported at the cursor) where ``placement`` says."""
    if placement is None:
        return
    context.view_layer.update()  # the world matrices of objects moved since the last redraw
    yaw = yaw_for(placement.facing)
    if placement.how == "row":
        _in_row(context, obj, arrays.positions @ rotation_z(yaw).T, placement)
        obj.rotation_euler = (0.0, 0.0, yaw)
    elif placement.how == "beside":
        _in_front_of(obj, bpy.data.objects.get(placement.target))
    elif placement.how == "into":
        box = bpy.data.objects.get(placement.target)
        if box is not None:
            low, high = box_bounds(box)
            obj.matrix_world = Matrix(fit_into_box(arrays.positions, np.array(box.matrix_world), low, high, placement.facing).tolist())
    else:
        obj.rotation_euler = (0.0, 0.0, yaw)


def box_bounds(box: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """The local bounds a result is fitted into: a mesh's bounding box, or an empty's cube (its display size each way)."""
    if box.type == "EMPTY":
        size = box.empty_display_size
        return np.full(3, -size), np.full(3, size)
    corners = np.array([tuple(corner) for corner in box.bound_box])
    return corners.min(axis=0), corners.max(axis=0)


def world_bounds(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([tuple(corner) for corner in obj.bound_box])
    matrix = np.array(obj.matrix_world)
    world = corners @ matrix[:3, :3].T + matrix[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def _in_row(context: bpy.types.Context, obj: bpy.types.Object, turned: np.ndarray, placement: Placement) -> None:
    """Into the batch's previews collection (made on its first result), right of the previews already there."""
    collection = next((c for c in bpy.data.collections if c.get(BATCH_PROPERTY) == placement.batch), None)
    if collection is None:
        collection = bpy.data.collections.new(PREVIEW_COLLECTION)
        collection[BATCH_PROPERTY] = placement.batch
        context.scene.collection.children.link(collection)
    row_max_x = max((world_bounds(other)[1][0] for other in collection.objects), default=None)
    for user in list(obj.users_collection):
        user.objects.unlink(obj)
    collection.objects.link(obj)
    obj.location = next_in_row(turned, row_max_x, placement.start)


def _in_front_of(obj: bpy.types.Object, preview: bpy.types.Object | None) -> None:
    if preview is None:
        return
    low, high = world_bounds(preview)
    obj.rotation_mode = preview.rotation_mode
    obj.rotation_euler, obj.rotation_quaternion, obj.scale = preview.rotation_euler, preview.rotation_quaternion, preview.scale
    obj.location = in_front_of(tuple(preview.location), float(high[1] - low[1]))
