"""The selected object's mesh as the backend takes it (Texture Selected): evaluated, triangulated, in object space."""

from __future__ import annotations

import bpy
import numpy as np

from . import meshdata
from .errors import AddonError


def selection_problem(context: bpy.types.Context) -> str:
    """Why the selection can't be textured, in a few words ("" when it can)."""
    obj = context.active_object
    if obj is None or not obj.select_get():
        return "Select the mesh object to texture"
    if obj.type != "MESH":
        return f"{obj.name} is not a mesh"
    return ""


def selected_mesh(context: bpy.types.Context) -> meshdata.MeshInput:
    """The active object's mesh with its modifiers applied, cut into triangles, positions in its own space."""
    problem = selection_problem(context)
    if problem:
        raise AddonError(problem, "click a mesh object in the viewport")
    obj = context.active_object
    evaluated = obj.evaluated_get(context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        positions = np.empty(3 * len(mesh.vertices), dtype=np.float32)
        mesh.vertices.foreach_get("co", positions)
        triangles = np.empty(3 * len(mesh.loop_triangles), dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", triangles)
    finally:
        evaluated.to_mesh_clear()
    if not len(triangles):
        raise AddonError(f"{obj.name} has no faces", "texture an object with faces, not only vertices or edges")
    return meshdata.to_wire(positions, triangles, obj.name)
