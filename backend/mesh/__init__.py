"""Meshes: the data type every pipeline returns, its extraction from a field, its wire form, and export.

Frame: right-handed, Y up, the object facing +Z (the glTF convention, and the frame
Hunyuan3D-1 outputs use). The Blender add-on maps (x, y, z) -> (x, -z, y) on import so the
object stands on Blender's Z-up ground. Extraction works in the field's own frame; a family
whose field is Z-up passes ``axes=(1, 2, 0)`` to get this frame (docs/mesh.md).
"""

from .extract import extract_mesh, marching_cubes, mesh_from_grid
from .grid import chunk_points_for_budget, sample_grid
from .types import Material, Mesh

__all__ = ["Material", "Mesh", "chunk_points_for_budget", "extract_mesh", "marching_cubes", "mesh_from_grid", "sample_grid"]
