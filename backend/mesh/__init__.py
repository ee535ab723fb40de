"""Meshes: the data type every pipeline returns, its wire form, and export.

Frame: right-handed, Y up, the object facing +Z (the glTF convention, and the frame
Hunyuan3D-1 outputs use). The Blender add-on maps (x, y, z) -> (x, -z, y) on import so the
object stands on Blender's Z-up ground.
"""

from .types import Mesh

__all__ = ["Mesh"]
