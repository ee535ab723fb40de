"""Levels of detail: decimated copies of a finished mesh, each with half the triangles of the one before.

Made in the backend after the mesh stage so that Blender only has to import them. Each level is
decimated from the level before with the mesh's own decimator (``cleanup.decimate``); its vertices
take the colour of the nearest vertex of the level it was made from.
"""

from __future__ import annotations

from collections.abc import Callable

from . import cleanup
from .types import Mesh


def next_level(mesh: Mesh) -> Mesh:
    """``mesh`` decimated to half its triangles (fast-simplification stops at or just below that)."""
    vertices, faces = cleanup.decimate(mesh.positions, mesh.faces, max(mesh.face_count // 2, 1))
    vertices, faces = cleanup.remove_degenerate_faces(vertices, faces)
    colors = None
    if mesh.colors is not None and len(vertices):
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(mesh.positions).query(vertices)
        colors = mesh.colors[nearest]
    return Mesh(positions=vertices, faces=faces, colors=colors)


def make_lods(mesh: Mesh, count: int, before_level: Callable[[int], None] | None = None) -> list[Mesh]:
    """``count`` levels after ``mesh``; ``before_level(k)`` runs before level k (1-based): progress, cancellation."""
    levels: list[Mesh] = []
    for level in range(1, count + 1):
        if before_level is not None:
            before_level(level)
        levels.append(next_level(levels[-1] if levels else mesh))
    return levels
