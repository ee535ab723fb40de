"""Mesh extraction from analytic signed distance fields: accuracy, clean-up, decimation, chunking, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.errors import JobCancelled
from backend.mesh import Mesh, chunk_points_for_budget, cleanup, extract_mesh, mesh_from_grid, sample_grid
from backend.mesh.grid import grid_axis


def sphere(radius: float, center=(0.0, 0.0, 0.0)):
    c = torch.tensor(center, dtype=torch.float32)
    return lambda p: torch.linalg.norm(p - c, dim=1) - radius


def torus(major: float, minor: float):
    def sdf(p: torch.Tensor) -> torch.Tensor:
        ring = torch.linalg.norm(p[:, :2], dim=1) - major
        return torch.sqrt(ring**2 + p[:, 2] ** 2) - minor

    return sdf


def union(*fields):
    return lambda p: torch.stack([f(p) for f in fields]).min(dim=0).values


def signed_volume(mesh: Mesh) -> float:
    p = mesh.positions.astype(np.float64)
    a, b, c = p[mesh.faces[:, 0]], p[mesh.faces[:, 1]], p[mesh.faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def component_count(mesh: Mesh) -> int:
    return len(np.unique(cleanup.connected_components(mesh.vertex_count, mesh.faces)))


def test_sphere_radius_and_outward_winding():
    mesh = extract_mesh(sphere(0.4), resolution=96, max_faces=200_000)
    radii = np.linalg.norm(mesh.positions, axis=1)
    assert abs(radii.mean() - 0.4) < 0.004
    assert np.abs(radii - 0.4).max() < 0.004
    assert signed_volume(mesh) == pytest.approx(4.0 / 3.0 * np.pi * 0.4**3, rel=0.01)
    normals_outward = np.einsum("ij,ij->i", mesh.normals, mesh.positions / radii[:, None])
    assert normals_outward.min() > 0.9


def test_positive_inside_convention_gives_the_same_surface():
    negative_inside = extract_mesh(sphere(0.3), resolution=64, max_faces=200_000)
    positive_inside = extract_mesh(lambda p: -sphere(0.3)(p), resolution=64, max_faces=200_000, inside_negative=False)
    np.testing.assert_allclose(np.sort(positive_inside.positions, axis=0), np.sort(negative_inside.positions, axis=0), atol=1e-6)
    assert signed_volume(positive_inside) > 0


def test_decimation_hits_the_target_within_one_percent():
    full = extract_mesh(torus(0.35, 0.12), resolution=128, max_faces=10_000_000)
    assert full.face_count > 50_000
    for target in (20_000, 5_000):
        mesh = extract_mesh(torus(0.35, 0.12), resolution=128, max_faces=target)
        assert target * 0.99 <= mesh.face_count <= target * 1.01
        tube_distance = torus(0.35, 0.12)(torch.from_numpy(mesh.positions)).abs().max().item()
        assert tube_distance < 0.01
        assert component_count(mesh) == 1


def test_floaters_are_removed_and_real_parts_kept():
    body = sphere(0.35)
    floater = sphere(0.025, center=(0.5, 0.5, 0.5))
    twin = sphere(0.15, center=(-0.3, -0.3, 0.3))
    assert component_count(extract_mesh(union(body, floater), resolution=96, min_component_ratio=0.0)) == 2
    cleaned = extract_mesh(union(body, floater), resolution=96)
    assert component_count(cleaned) == 1
    assert np.linalg.norm(cleaned.positions, axis=1).max() < 0.36
    assert component_count(extract_mesh(union(body, twin), resolution=96)) == 2


def test_degenerate_faces_are_removed():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [2, 2, 2], [1, 1, 0], [9, 9, 9]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 0, 1], [0, 1, 5], [2, 1, 0], [0, 5, 1]], dtype=np.int32)
    # (0,1,3) duplicates (0,1,2) once 3 is welded onto 2; (0,0,1) repeats a vertex; (2,1,0) and
    # (0,5,1) repeat faces with the other winding; (0,1,5) is a real triangle.
    vertices, faces = cleanup.remove_degenerate_faces(vertices, faces)
    assert len(faces) == 2
    assert len(vertices) == 4  # the unused (2,2,2) and (9,9,9) are gone
    assert (cleanup.doubled_areas(vertices, faces) > 0).all()


def test_collinear_faces_are_removed():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3]], dtype=np.int32)
    vertices, faces = cleanup.remove_degenerate_faces(vertices, faces)
    assert faces.tolist() == [[0, 1, 2]]
    assert vertices.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_vertex_clustering_merges_each_cell_into_its_average():
    # Cells of 1 start half a cell below the lowest corner, at -0.5: vertices 0, 1 share a cell.
    vertices = np.array([[0, 0, 0], [0.2, 0.4, 0], [3, 0, 0], [0, 3, 0], [3, 3, 0], [0.3, 0.1, 0]], dtype=np.float32)
    faces = np.array([[0, 2, 3], [1, 2, 3], [2, 4, 3], [0, 1, 2], [5, 3, 2]], dtype=np.int32)
    clustered, kept = cleanup.cluster_vertices(vertices, faces, 1.0)
    np.testing.assert_allclose(clustered[kept[0, 0]], [0.5 / 3, 0.5 / 3, 0], atol=1e-7)  # 0, 1 and 5 averaged
    # (1, 2, 3) and (5, 3, 2) repeat (0, 2, 3), the second with the other winding, which stays;
    # (0, 1, 2) collapses to an edge.
    assert len(clustered) == 4 and len(kept) == 3
    assert sorted(map(tuple, clustered[kept].reshape(-1, 3).round(4).tolist())).count((3.0, 3.0, 0.0)) == 1


def test_neighbour_averaging_moves_each_vertex_to_its_ring_mean():
    vertices = np.array([[0, 0, 0], [3, 0, 0], [0, 3, 0]], dtype=np.float64)
    np.testing.assert_allclose(cleanup.average_neighbours(vertices, np.array([[0, 1, 2]]), 1), np.full((3, 3), [1.0, 1.0, 0.0]))
    flat = extract_mesh(lambda p: p[:, 2] - 0.013, resolution=32, max_faces=10**6, cluster_size=0.05)
    assert np.abs(flat.positions[:, 2] - 0.013).max() < 1e-5  # a plane stays a plane


def test_upstream_finish_clusters_smooths_and_keeps_floaters():
    body, floater = sphere(0.35), sphere(0.02, center=(0.45, 0.45, 0.45))
    clean = extract_mesh(union(body, floater), resolution=128, max_faces=10**6)
    upstream = extract_mesh(union(body, floater), resolution=128, max_faces=10**6, cluster_size=0.02)
    assert component_count(clean) == 1 and component_count(upstream) == 2
    assert upstream.face_count < clean.face_count / 4  # cells of 0.02 against a grid spacing of 0.0094
    edges = upstream.positions[upstream.faces] - np.roll(upstream.positions[upstream.faces], 1, axis=1)
    assert np.median(np.linalg.norm(edges, axis=2)) > 0.015
    radii = np.linalg.norm(upstream.positions, axis=1)
    main = radii < 0.4
    assert 0.345 < radii[main].mean() < 0.35  # plain averaging shrinks the surface a little


def test_colours_are_queried_at_the_final_vertices():
    def colour(p: torch.Tensor) -> torch.Tensor:
        return (p + 0.6) / 1.2

    mesh = extract_mesh(sphere(0.3), colour, resolution=48, max_faces=1_000)
    assert mesh.face_count <= 1_010
    np.testing.assert_allclose(mesh.colors[:, :3], (mesh.positions + 0.6) / 1.2, atol=1e-5)
    np.testing.assert_array_equal(mesh.colors[:, 3], 1.0)


def test_axes_permutation_keeps_faces_outward():
    off_center = sphere(0.2, center=(0.1, 0.2, 0.3))

    def colour(p: torch.Tensor) -> torch.Tensor:
        return (p + 0.6) / 1.2

    z_up = extract_mesh(off_center, colour, resolution=48)
    for axes in ((1, 2, 0), (0, 2, 1)):
        mesh = extract_mesh(off_center, colour, resolution=48, axes=axes)
        np.testing.assert_allclose(mesh.positions.mean(axis=0), z_up.positions.mean(axis=0)[list(axes)], atol=1e-6)
        np.testing.assert_allclose(mesh.colors[:, :3], z_up.colors[:, :3], atol=1e-6)
        assert signed_volume(mesh) == pytest.approx(signed_volume(z_up), rel=1e-5)


def test_grid_layout_matches_coordinates_for_any_chunk_size():
    def field(p: torch.Tensor) -> torch.Tensor:
        return p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2]

    axis = grid_axis(7, 0.5)
    expected = axis[:, None, None] + 10 * axis[None, :, None] + 100 * axis[None, None, :]
    for chunk_points in (1, 10, 49, 343, 1000):
        np.testing.assert_allclose(sample_grid(field, 7, 0.5, chunk_points=chunk_points), expected, atol=1e-4)
    assert axis[0] == -0.5 and axis[-1] == 0.5


def test_progress_and_cancellation_between_chunks():
    events = []
    mesh = extract_mesh(
        sphere(0.3), resolution=32, chunk_points=32**3 // 4, progress=lambda step, total: events.append((step, total))
    )
    assert mesh.face_count > 0
    assert events == [(step, 8) for step in range(1, 9)]

    calls = {"n": 0}
    field_calls = {"n": 0}

    def cancel_on_third_check() -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise JobCancelled()

    def counting_sphere(p: torch.Tensor) -> torch.Tensor:
        field_calls["n"] += 1
        return sphere(0.3)(p)

    with pytest.raises(JobCancelled):
        extract_mesh(counting_sphere, resolution=32, chunk_points=32**3 // 4, check_cancelled=cancel_on_third_check)
    assert field_calls["n"] == 2


def test_chunk_size_from_memory_budget():
    assert chunk_points_for_budget(1 << 30, 1024) == 1 << 20
    assert chunk_points_for_budget(1000, 1024) == 4096  # a floor, however tight the budget
    with pytest.raises(ValueError, match="positive"):
        chunk_points_for_budget(0, 1024)
    sizes = []

    def recording_sphere(p: torch.Tensor) -> torch.Tensor:
        sizes.append(len(p))
        return sphere(0.3)(p)

    extract_mesh(recording_sphere, resolution=40, memory_budget=16_384 * 64, bytes_per_point=64)
    assert max(sizes) == 16_384 and sum(sizes) == 40**3


def test_half_precision_field_output_is_accepted():
    mesh = extract_mesh(lambda p: sphere(0.4)(p).half(), resolution=48)
    assert abs(np.linalg.norm(mesh.positions, axis=1).mean() - 0.4) < 0.004


def test_empty_field_gives_an_empty_mesh():
    mesh = mesh_from_grid(np.ones((16, 16, 16), dtype=np.float32), color_fn=lambda p: torch.zeros(len(p), 3))
    assert mesh.face_count == 0 and mesh.vertex_count == 0


def test_grid_must_be_a_cube():
    with pytest.raises(ValueError, match="cube"):
        mesh_from_grid(np.ones((8, 8, 9), dtype=np.float32))
