"""Mesh extraction: ours (backend.mesh) against the Hunyuan3D-2 path, on one analytic SDF grid.

The shape is a (2, 3) torus knot swept by a circle: the surface at distance ``tube`` from a
smooth closed curve. Its signed distance is |p - curve| - tube, exact wherever the tube radius
is below the curve's radius of curvature and half its closest self-approach (both checked
below). The distance to the curve is taken to a dense polyline sample of it through a k-d tree;
with the sample spacing used the error is below 1e-6.

Both paths start from the same grid and are timed from the grid to a decimated mesh:
- reference (Hunyuan3D-2): scikit-image Lewiner marching cubes, pymeshlab small-component
  removal (nbfaceratio 0.005), null/duplicate face removal, pymeshlab quadric edge collapse
  with Hunyuan3D-2's settings;
- ours: backend.mesh.mesh_from_grid (Lewiner marching cubes, numpy/scipy clean-up,
  fast-simplification quadric decimation, normals).

Accuracy is the two-sided Hausdorff distance to the analytic surface as a percentage of the
shape's bounding-box diagonal, both directions exact at the sampled points: mesh -> surface is
|SDF| at points sampled uniformly on the mesh and at every vertex; surface -> mesh is the
point-to-triangle distance (pymeshlab) from points sampled uniformly on the analytic surface.

Needs the dev extra (pymeshlab). Run: python benchmarks/mesh_extraction.py [--resolution 384]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.mesh import mesh_from_grid
from backend.mesh.grid import grid_axis

HUNYUAN3D_2_FLOATER_RATIO = 0.005


class TorusKnotTube:
    def __init__(self, major=0.34, minor=0.16, p=2, q=3, tube=0.06, curve_samples=20_000):
        self.major, self.minor, self.p, self.q, self.tube = major, minor, p, q, tube
        self.curve = self.curve_points(np.linspace(0.0, 2.0 * np.pi, curve_samples, endpoint=False))
        self.spacing = float(np.linalg.norm(np.diff(self.curve, axis=0), axis=1).max())
        self.tree = cKDTree(self.curve)
        self.check_exact()

    def curve_points(self, t: np.ndarray) -> np.ndarray:
        r = self.major + self.minor * np.cos(self.q * t)
        return np.stack([r * np.cos(self.p * t), r * np.sin(self.p * t), self.minor * np.sin(self.q * t)], axis=1)

    def check_exact(self) -> None:
        c = self.curve
        d1 = (np.roll(c, -1, 0) - np.roll(c, 1, 0)) / 2.0
        d2 = np.roll(c, -1, 0) - 2.0 * c + np.roll(c, 1, 0)
        curvature = np.linalg.norm(np.cross(d1, d2), axis=1) / np.linalg.norm(d1, axis=1) ** 3
        if 1.0 / curvature.max() <= self.tube:
            raise ValueError("tube radius exceeds the curve's radius of curvature; the SDF would not be exact")
        arclength = np.cumsum(np.linalg.norm(np.diff(c, axis=0, append=c[:1]), axis=1))
        pairs = self.tree.query_pairs(2.0 * self.tube, output_type="ndarray")
        apart = np.abs(arclength[pairs[:, 0]] - arclength[pairs[:, 1]])
        apart = np.minimum(apart, arclength[-1] - apart)
        if (apart > np.pi * self.tube).any():
            raise ValueError("the curve comes back within two tube radii of itself; the SDF would not be exact")

    def sdf(self, points: np.ndarray, cap: float = np.inf) -> np.ndarray:
        """Exact signed distance; values beyond ``cap`` are clamped to it (only their sign matters there)."""
        distance, _ = self.tree.query(points, distance_upper_bound=cap + self.tube, workers=-1)
        return (np.minimum(distance, cap + self.tube) - self.tube).astype(np.float32)

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        return self.curve.min(axis=0) - self.tube, self.curve.max(axis=0) + self.tube

    def surface_samples(self, count: int, rng: np.random.Generator) -> np.ndarray:
        t = rng.uniform(0.0, 2.0 * np.pi, count)
        h = 1e-5
        tangent = self.curve_points(t + h) - self.curve_points(t - h)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        helper = np.where(np.abs(tangent[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
        normal = np.cross(tangent, helper)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        binormal = np.cross(tangent, normal)
        angle = rng.uniform(0.0, 2.0 * np.pi, (count, 1))
        return self.curve_points(t) + self.tube * (np.cos(angle) * normal + np.sin(angle) * binormal)


def sample_grid(shape: TorusKnotTube, resolution: int, bound: float) -> np.ndarray:
    axis = grid_axis(resolution, bound)
    ys, zs = np.meshgrid(axis, axis, indexing="ij")
    plane = np.stack([np.zeros(ys.size, dtype=np.float32), ys.ravel(), zs.ravel()], axis=1)
    grid = np.empty((resolution,) * 3, dtype=np.float32)
    cap = 4.0 * 2.0 * bound / (resolution - 1)
    for i, x in enumerate(axis):
        plane[:, 0] = x
        grid[i] = shape.sdf(plane, cap=cap).reshape(resolution, resolution)
    return grid


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    chosen = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random((2, count, 1))
    flip = (u + v) > 1.0
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    return a[chosen] + u * (b[chosen] - a[chosen]) + v * (c[chosen] - a[chosen])


def hausdorff(shape: TorusKnotTube, vertices: np.ndarray, faces: np.ndarray, samples: int, seed: int = 0) -> dict:
    import pymeshlab

    rng = np.random.default_rng(seed)
    on_mesh = np.concatenate([sample_mesh(vertices, faces, samples, rng), vertices.astype(np.float64)])
    to_surface = np.abs(shape.sdf(on_mesh))
    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=vertices.astype(np.float64), face_matrix=faces.astype(np.int32)))
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=shape.surface_samples(samples, rng)))
    to_mesh = meshes.get_hausdorff_distance(
        sampledmesh=1,
        targetmesh=0,
        samplevert=True,
        sampleedge=False,
        samplefauxedge=False,
        sampleface=False,
        samplenum=samples,
        maxdist=pymeshlab.PercentageValue(100),
    )
    return {
        "mesh_to_surface": float(to_surface.max()),
        "surface_to_mesh": to_mesh["max"],
        "mean": float((to_surface.mean() + to_mesh["mean"]) / 2.0),
    }


def reference_path(grid: np.ndarray, bound: float, max_faces: int) -> tuple[np.ndarray, np.ndarray, dict]:
    import pymeshlab
    from skimage.measure import marching_cubes

    times = {}
    start = time.perf_counter()
    vertices, faces, _, _ = marching_cubes(grid, 0.0, method="lewiner")
    vertices = vertices * (2.0 * bound / (grid.shape[0] - 1)) - bound
    times["marching cubes"] = time.perf_counter() - start

    start = time.perf_counter()
    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=vertices.astype(np.float64), face_matrix=faces.astype(np.int32)))
    meshes.compute_selection_by_small_disconnected_components_per_face(nbfaceratio=HUNYUAN3D_2_FLOATER_RATIO)
    meshes.compute_selection_transfer_face_to_vertex(inclusive=False)
    meshes.meshing_remove_selected_vertices_and_faces()
    meshes.meshing_remove_duplicate_faces()
    meshes.meshing_remove_null_faces()
    meshes.meshing_remove_unreferenced_vertices()
    times["clean-up"] = time.perf_counter() - start

    start = time.perf_counter()
    if meshes.current_mesh().face_number() > max_faces:
        meshes.meshing_decimation_quadric_edge_collapse(
            targetfacenum=max_faces,
            qualitythr=1.0,
            preserveboundary=True,
            boundaryweight=3,
            preservenormal=True,
            preservetopology=True,
            autoclean=True,
        )
    result = meshes.current_mesh()
    vertices, faces = result.vertex_matrix().astype(np.float32), result.face_matrix().astype(np.int32)
    times["decimation"] = time.perf_counter() - start
    return vertices, faces, times


def our_path(grid: np.ndarray, bound: float, max_faces: int) -> tuple[np.ndarray, np.ndarray, dict]:
    phases = ("marching cubes", "clean-up", "decimation", "normals")
    stamps = [time.perf_counter()]
    mesh = mesh_from_grid(grid, bound, max_faces=max_faces, progress=lambda step, total: stamps.append(time.perf_counter()))
    times = {name: stamps[i + 1] - stamps[i] for i, name in enumerate(phases)}
    return mesh.positions, mesh.faces, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=384, help="grid samples per axis (default 384, as upstream)")
    parser.add_argument("--bound", type=float, default=0.6, help="the grid spans [-bound, bound]^3 (default 0.6)")
    parser.add_argument("--max-faces", type=int, default=120_000, help="decimation target (default 120000)")
    parser.add_argument("--samples", type=int, default=500_000, help="surface samples per Hausdorff direction (default 500000)")
    args = parser.parse_args()

    import pymeshlab  # noqa: F401  (fail before the long grid build if the dev extra is missing)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, numpy {np.__version__}")
    shape = TorusKnotTube()
    start = time.perf_counter()
    grid = sample_grid(shape, args.resolution, args.bound)
    print(
        f"grid: {args.resolution}^3 over [-{args.bound}, {args.bound}]^3, built in {time.perf_counter() - start:.1f} s (not timed below)"
    )
    low, high = shape.bounding_box()
    diagonal = float(np.linalg.norm(high - low))
    print(
        f"shape: (2,3) torus knot tube, radius {shape.tube}, bounding-box diagonal {diagonal:.4f}, curve sample spacing {shape.spacing:.2e}"
    )

    results = {}
    for name, path in (("Hunyuan3D-2 (skimage + pymeshlab)", reference_path), ("ours (backend.mesh)", our_path)):
        vertices, faces, times = path(grid, args.bound, args.max_faces)
        results[name] = (times, len(faces), hausdorff(shape, vertices, faces, args.samples))

    phases = ["marching cubes", "clean-up", "decimation", "normals"]
    header = (
        f"{'path':<36}"
        + "".join(f"{p:>16}" for p in phases)
        + f"{'total s':>10}{'faces':>9}{'H mesh->surf %':>16}{'H surf->mesh %':>16}{'mean %':>9}"
    )
    print(header)
    print("-" * len(header))
    totals = {}
    for name, (times, face_count, h) in results.items():
        totals[name] = sum(times.values())
        cells = "".join(f"{times[p]:>16.3f}" if p in times else f"{'-':>16}" for p in phases)
        print(
            f"{name:<36}{cells}{totals[name]:>10.3f}{face_count:>9}"
            f"{100 * h['mesh_to_surface'] / diagonal:>16.3f}{100 * h['surface_to_mesh'] / diagonal:>16.3f}{100 * h['mean'] / diagonal:>9.4f}"
        )
    reference, ours = totals.values()
    worst = max(results["ours (backend.mesh)"][2]["mesh_to_surface"], results["ours (backend.mesh)"][2]["surface_to_mesh"])
    print(
        f"speed-up: {reference / ours:.2f}x (goal >= 2x); our Hausdorff {100 * worst / diagonal:.3f}% of the diagonal (goal <= 0.5%)"
    )


if __name__ == "__main__":
    main()
