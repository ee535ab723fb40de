"""Mesh clean-up on plain arrays: degenerate faces, floaters, decimation, clustering, smoothing, normals.

Every function takes float (N, 3) vertices and int (M, 3) faces and returns new arrays; none
of them needs torch.
"""

from __future__ import annotations

import numpy as np


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like ``np.unique(rows, axis=0, return_index=True, return_inverse=True)`` for bit-identical rows, about 3x faster."""
    rows = np.ascontiguousarray(rows)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first], first, inverse.reshape(-1)


def remove_unreferenced_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    if used.all():
        return vertices, faces
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index[faces].astype(faces.dtype)


def merge_duplicate_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weld vertices at bit-identical positions (marching cubes emits them where the field is exactly zero on a sample)."""
    if not len(vertices):
        return vertices, faces
    unique, _, inverse = unique_rows(vertices + vertices.dtype.type(0))  # + 0 turns -0.0 into 0.0
    if len(unique) == len(vertices):
        return vertices, faces
    return unique, inverse[faces].astype(faces.dtype)


def doubled_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a = vertices[faces[:, 0]]
    ab = vertices[faces[:, 1]] - a
    ac = vertices[faces[:, 2]] - a
    cross = np.stack(
        [
            ab[:, 1] * ac[:, 2] - ab[:, 2] * ac[:, 1],
            ab[:, 2] * ac[:, 0] - ab[:, 0] * ac[:, 2],
            ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0],
        ],
        axis=1,
    )
    return np.sqrt(np.einsum("ij,ij->i", cross, cross))


def remove_degenerate_faces(vertices: np.ndarray, faces: np.ndarray, area_epsilon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Drop faces that repeat a vertex, have area at most ``area_epsilon``, or duplicate another face."""
    vertices, faces = merge_duplicate_vertices(vertices, faces)
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    faces = faces[distinct]
    faces = faces[doubled_areas(vertices, faces) > 2.0 * area_epsilon]
    _, first, _ = unique_rows(np.sort(faces, axis=1))
    if len(first) != len(faces):
        faces = faces[np.sort(first)]
    return remove_unreferenced_vertices(vertices, faces)


def connected_components(vertex_count: int, faces: np.ndarray) -> np.ndarray:
    """The component label of each face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as label_graph

    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(vertex_count, vertex_count))
    _, vertex_labels = label_graph(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def remove_small_components(
    vertices: np.ndarray, faces: np.ndarray, min_face_ratio: float = 0.005
) -> tuple[np.ndarray, np.ndarray]:
    """Remove floaters: connected components with fewer than ``min_face_ratio`` of all faces.

    The largest component is always kept, so a mesh made only of small pieces is not erased.
    """
    if not len(faces):
        return vertices, faces
    labels = connected_components(len(vertices), faces)
    counts = np.bincount(labels)
    keep = counts >= min_face_ratio * len(faces)
    keep[np.argmax(counts)] = True
    if keep.all():
        return vertices, faces
    return remove_unreferenced_vertices(vertices, faces[keep[labels]])


def decimate(
    vertices: np.ndarray, faces: np.ndarray, max_faces: int, aggressiveness: float = 7.0
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to at most about ``max_faces`` triangles (fast-simplification).

    Args:
        aggressiveness: fast-simplification's ``agg``; lower keeps the shape closer at more cost.
    """
    if len(faces) <= max_faces:
        return vertices, faces
    import fast_simplification

    points, triangles = fast_simplification.simplify(
        np.ascontiguousarray(vertices, dtype=np.float32),
        np.ascontiguousarray(faces, dtype=np.int32),
        target_count=max_faces,
        agg=aggressiveness,
    )
    return remove_unreferenced_vertices(points.astype(np.float32), triangles.astype(np.int32))


def cluster_vertices(vertices: np.ndarray, faces: np.ndarray, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering: all vertices in one cubic cell of side ``cell_size`` become their average.

    The cells start half a cell below the mesh's lowest corner. Faces whose corners fall into
    fewer than three cells are dropped, and a face repeated with the same orientation is kept
    once (two faces over the same corners with opposite windings both stay). This gives what
    Open3D's ``simplify_vertex_clustering`` with average contraction gives, which Hunyuan3D-1 uses.
    """
    if cell_size <= 0:
        raise ValueError(f"cell_size must be positive, got {cell_size}")
    if not len(faces):
        return vertices, faces
    origin = vertices.min(axis=0).astype(np.float64) - cell_size / 2
    cells = np.floor((vertices - origin) / cell_size).astype(np.int64)
    _, _, cluster = unique_rows(cells)
    counts = np.bincount(cluster).astype(np.float64)
    centres = np.stack([np.bincount(cluster, weights=vertices[:, axis].astype(np.float64)) for axis in range(3)], axis=1)
    centres = (centres / counts[:, None]).astype(vertices.dtype)
    corners = cluster[faces]
    keep = (corners[:, 0] != corners[:, 1]) & (corners[:, 1] != corners[:, 2]) & (corners[:, 0] != corners[:, 2])
    corners = corners[keep]
    # Rotated to start at the smallest index, a face and its repeats with the same winding are equal rows.
    start = np.argmin(corners, axis=1)
    rows = np.arange(len(corners))
    rotated = np.stack([corners[rows, (start + k) % 3] for k in range(3)], axis=1)
    _, first, _ = unique_rows(rotated)
    corners = corners[np.sort(first)]
    return remove_unreferenced_vertices(centres, corners.astype(faces.dtype))


def average_neighbours(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Plain Laplacian smoothing: each pass moves every vertex to the mean of itself and its neighbours."""
    if iterations <= 0 or not len(faces):
        return vertices
    from scipy.sparse import coo_matrix, diags, identity

    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two faces counts once
    with_self = adjacency + identity(n, format="csr")
    averaging = diags(1.0 / np.asarray(with_self.sum(axis=1)).ravel()) @ with_self
    points = vertices.astype(np.float64)
    for _ in range(iterations):
        points = averaging @ points
    return points.astype(vertices.dtype)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals, float32; isolated vertices get (0, 0, 0)."""
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    face_normals = np.cross(b - a, c - a)  # length is twice the area: the weight we want
    normals = np.zeros((len(vertices), 3), dtype=np.float64)
    for corner in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(faces[:, corner], weights=face_normals[:, axis], minlength=len(vertices))
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0).astype(np.float32)
