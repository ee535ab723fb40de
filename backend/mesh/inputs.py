"""A mesh sent as a job's input (the add-on's Texture Selected, ``generate --mesh``): checked before any job is queued.

On the wire it is two buffers of a ``submit``: ``mesh.positions`` (``<f4``, N x 3) and
``mesh.faces`` (``<i4``, M x 3, triangles), in our mesh frame (Y up, front towards +Z).
docs/protocol.md is the specification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..protocol import MESH_FACES_BUFFER, MESH_POSITIONS_BUFFER, Buffer, ErrorCode
from .types import Mesh

MAX_INPUT_FACES = 1_000_000
MAX_INPUT_VERTICES = 3_000_000


def _bad(message: str, hint: str) -> BackendError:
    return BackendError(ErrorCode.BAD_INPUT, message, hint=hint)


def mesh_from_buffers(buffers: dict[str, Buffer]) -> Mesh | None:
    """The input mesh of a ``submit`` (None when it has neither mesh buffer), or a ``bad_input`` error saying what is wrong."""
    positions, faces = buffers.get(MESH_POSITIONS_BUFFER), buffers.get(MESH_FACES_BUFFER)
    if positions is None and faces is None:
        return None
    if positions is None or faces is None:
        raise _bad(f"a mesh input needs both {MESH_POSITIONS_BUFFER} and {MESH_FACES_BUFFER}",
                   "send the vertex positions and the triangles as two buffers (docs/protocol.md)")
    for buf, dtype, what in ((positions, "<f4", "vertex positions"), (faces, "<i4", "vertex indices of the triangles")):
        if buf.dtype != dtype or len(buf.shape) != 2 or buf.shape[1] != 3:
            raise _bad(f"{buf.name} must be {dtype} with shape (N, 3), the {what}; got {buf.dtype} {list(buf.shape)}",
                       "triangulate the mesh and send float32 positions and int32 indices")
    return check_input_mesh(positions.to_array(), faces.to_array())


def check_input_mesh(positions: np.ndarray, faces: np.ndarray) -> Mesh:
    """A Mesh from (N, 3) positions and (M, 3) triangle indices, refusing what no stage could use."""
    vertex_count, face_count = len(positions), len(faces)
    if face_count == 0 or vertex_count < 3:
        raise _bad(f"the mesh is empty ({vertex_count} vertices, {face_count} triangles)", "select an object with faces")
    if face_count > MAX_INPUT_FACES or vertex_count > MAX_INPUT_VERTICES:
        raise _bad(f"the mesh has {face_count:,} triangles and {vertex_count:,} vertices; the limits are "
                   f"{MAX_INPUT_FACES:,} and {MAX_INPUT_VERTICES:,}", "decimate it first (Blender's Decimate modifier)")
    bad_positions = int((~np.isfinite(positions)).any(axis=1).sum())
    if bad_positions:
        raise _bad(f"{bad_positions} vertex positions are NaN or infinite", "fix or delete those vertices and send the mesh again")
    low, high = int(faces.min()), int(faces.max())
    if low < 0 or high >= vertex_count:
        raise _bad(f"triangle indices must lie in [0, {vertex_count - 1}], got [{low}, {high}]",
                   "each index names one of the vertices sent in mesh.positions, counting from 0")
    collapsed = int(((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])).sum())
    if collapsed:
        raise _bad(f"{collapsed} triangles use the same vertex twice", "remove the degenerate faces (Mesh > Clean Up > Degenerate Dissolve)")
    return Mesh(positions, faces)


def load_mesh_file(path: Path) -> Mesh:
    """A mesh file (GLB, glTF, OBJ, PLY, STL...) as one triangle mesh, checked as a wire input is."""
    import trimesh

    if not path.is_file():
        raise _bad(f"{path}: no such file", "check the path given for --mesh")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except (ValueError, KeyError, OSError) as exc:
        raise _bad(f"{path}: not a mesh file trimesh can read ({exc})", "use GLB, OBJ, PLY or STL") from None
    if not isinstance(loaded, trimesh.Trimesh):
        raise _bad(f"{path}: holds no triangles", "export the mesh with its faces")
    return check_input_mesh(np.asarray(loaded.vertices, dtype=np.float32), np.asarray(loaded.faces, dtype=np.int32))
