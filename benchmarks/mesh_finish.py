"""Hunyuan3D-1's two mesh finishes side by side: `clean` (ours, the default) and `upstream`.

Both start from the grid of benchmarks/mesh_extraction.py (an exact SDF of a (2,3) torus-knot
tube of radius 0.06, 384^3 samples over [-0.6, 0.6]^3: SVRM's grid) and go through
backend.mesh.mesh_from_grid as the reconstruction stage calls it:
- clean: floaters removed, quadric decimation (fast-simplification) to the face budget;
- upstream: vertices clustered on a 0.007 grid (averaged), averaged with their neighbours twice,
  floaters kept, decimated only above the face budget (Hunyuan3D-1's refine_mesh).

Printed per finish: time from the grid, faces, vertices, median edge length, the two-sided
Hausdorff distance and the mean distance to the analytic surface (% of the bounding-box
diagonal), and the mean signed distance of the mesh's surface points (negative: the mesh
shrank inwards). With open3d importable, it also checks that backend.mesh.cleanup's clustering
and neighbour averaging give Open3D's own result on this marching-cubes mesh.

Needs the dev extra (pymeshlab). Run: python benchmarks/mesh_finish.py [--resolution 384]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mesh_extraction import TorusKnotTube, hausdorff, sample_grid, sample_mesh  # noqa: E402

from backend.mesh import cleanup, mesh_from_grid  # noqa: E402
from backend.mesh.extract import CLUSTER_SMOOTHING_PASSES, marching_cubes  # noqa: E402
from backend.pipelines.hunyuan3d_v1.svrm_pipeline import UPSTREAM_CLUSTER_SIZE  # noqa: E402


def compare_with_open3d(grid: np.ndarray, bound: float) -> str:
    try:
        import open3d as o3d
    except ImportError:
        return "open3d not installed: equality with Open3D not checked"
    vertices, faces = marching_cubes(grid, bound)
    vertices = vertices.astype(np.float64)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    # Upstream's clean-up before clustering; both sides then start from its result.
    mesh = mesh.remove_unreferenced_vertices().remove_duplicated_triangles().remove_duplicated_vertices()
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    clustered = mesh.simplify_vertex_clustering(voxel_size=UPSTREAM_CLUSTER_SIZE,
                                                contraction=o3d.geometry.SimplificationContraction.Average)
    smoothed = clustered.filter_smooth_simple(number_of_iterations=CLUSTER_SMOOTHING_PASSES)
    ours, our_faces = cleanup.cluster_vertices(vertices, faces, UPSTREAM_CLUSTER_SIZE)
    ours_smoothed = cleanup.average_neighbours(ours, our_faces, CLUSTER_SMOOTHING_PASSES)
    theirs, their_faces = np.asarray(clustered.vertices), np.asarray(clustered.triangles)
    if len(ours) != len(theirs) or len(our_faces) != len(their_faces):
        return f"open3d {o3d.__version__}: DIFFERENT counts ({len(ours)} / {len(theirs)} vertices, {len(our_faces)} / {len(their_faces)} faces)"

    def canonical(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.lexsort(np.round(points, 9).T[::-1])  # the two sum cells in different orders: last-bit differences
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        renumbered = rank[triangles]
        start = np.argmin(renumbered, axis=1)
        rows = np.arange(len(renumbered))
        rotated = np.stack([renumbered[rows, (start + k) % 3] for k in range(3)], axis=1)
        return order, points[order], rotated[np.lexsort(rotated.T[::-1])]

    our_order, our_points, our_triangles = canonical(ours, our_faces)
    their_order, their_points, their_triangles = canonical(theirs, their_faces)
    same_faces = bool((our_triangles == their_triangles).all())
    vertex_difference = float(np.abs(our_points - their_points).max())
    smoothed_difference = float(np.abs(ours_smoothed[our_order] - np.asarray(smoothed.vertices)[their_order]).max())
    return (f"open3d {o3d.__version__}, clustering the marching-cubes mesh: {len(theirs)} vertices, {len(their_faces)} faces; "
            f"same faces: {same_faces}; clustered vertices max diff {vertex_difference:.2g}; smoothed {smoothed_difference:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=384, help="grid samples per axis (default 384, as upstream)")
    parser.add_argument("--max-faces", type=int, default=120_000, help="face budget (default 120000, as upstream)")
    parser.add_argument("--samples", type=int, default=500_000, help="surface samples per Hausdorff direction (default 500000)")
    args = parser.parse_args()

    import pymeshlab  # noqa: F401  (fail before the long grid build if the dev extra is missing)

    bound = 0.6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, numpy {np.__version__}")
    shape = TorusKnotTube()
    grid = sample_grid(shape, args.resolution, bound)
    low, high = shape.bounding_box()
    diagonal = float(np.linalg.norm(high - low))
    print(f"grid: {args.resolution}^3 over [-{bound}, {bound}]^3 (spacing {2 * bound / (args.resolution - 1):.4f}); "
          f"tube radius {shape.tube}, bounding-box diagonal {diagonal:.4f}; face budget {args.max_faces}")
    header = (f"{'finish':<10}{'time s':>8}{'faces':>9}{'vertices':>10}{'median edge':>13}{'H mesh->surf %':>16}"
              f"{'H surf->mesh %':>16}{'mean %':>9}{'mean signed %':>15}")
    print(header)
    print("-" * len(header))
    for finish, cluster_size in (("clean", 0.0), ("upstream", UPSTREAM_CLUSTER_SIZE)):
        start = time.perf_counter()
        mesh = mesh_from_grid(grid, bound, max_faces=args.max_faces, cluster_size=cluster_size)
        elapsed = time.perf_counter() - start
        corners = mesh.positions[mesh.faces].astype(np.float64)
        edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2)
        distances = hausdorff(shape, mesh.positions, mesh.faces, args.samples)
        signed = float(shape.sdf(sample_mesh(mesh.positions, mesh.faces, args.samples, np.random.default_rng(1))).mean())
        print(f"{finish:<10}{elapsed:>8.2f}{mesh.face_count:>9}{mesh.vertex_count:>10}{np.median(edges):>13.4f}"
              f"{100 * distances['mesh_to_surface'] / diagonal:>16.3f}{100 * distances['surface_to_mesh'] / diagonal:>16.3f}"
              f"{100 * distances['mean'] / diagonal:>9.4f}{100 * signed / diagonal:>15.4f}")
    print(compare_with_open3d(grid, bound))


if __name__ == "__main__":
    main()
