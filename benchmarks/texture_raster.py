"""Texture-stage geometry speed: six official views of a big mesh, and a 2048^2 bake.

The mesh is a bumpy sphere (a latitude-longitude grid displaced radially by a few sine waves), so
views have self-occlusion and triangles of every orientation. Two measurements:
- raster: the six official orthographic views at --view-size squared of a --faces mesh, each with
  face index, barycentrics, depth, position and normal maps (``backend.texture.views.render_view``);
- bake: a --bake-faces mesh unwrapped with xatlas (timed apart), its UV layout rasterized at
  --texture-size squared, six --view-size views of a known colour field baked into it and the
  unseen texels filled; the PSNR of the baked texels against the known colours is printed too.

Run: python benchmarks/texture_raster.py [--device cuda] [--faces 500000] [--bake-faces 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.texture.bake import bake_views, fill_texture
from backend.texture.uv import rasterize_uv, unwrap
from backend.texture.views import fit_to_views, official_views, render_view, vertex_normals


def bumpy_sphere(faces: int) -> tuple[np.ndarray, np.ndarray]:
    """About ``faces`` triangles: a rows x columns grid over the sphere, two triangles per cell."""
    rows = max(4, int(round(np.sqrt(faces / 4))))
    cols = max(8, int(round(faces / (2 * rows))))
    theta = np.linspace(0, np.pi, rows + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    radius = 1 + 0.08 * np.sin(5 * t) * np.cos(7 * p) + 0.05 * np.sin(11 * p + 3 * t)
    ring = np.stack([radius * np.sin(t) * np.sin(p), radius * np.cos(t), radius * np.sin(t) * np.cos(p)], -1)
    positions = np.concatenate([[[0, 1, 0]], ring.reshape(-1, 3), [[0, -1, 0]]]).astype(np.float32)
    index = (np.arange((rows - 1) * cols).reshape(rows - 1, cols) + 1)
    right = np.roll(index, -1, axis=1)
    quads_a, quads_b = index[:-1], right[:-1]
    quads_c, quads_d = index[1:], right[1:]
    body = np.concatenate([np.stack([quads_a, quads_c, quads_b], -1).reshape(-1, 3),
                           np.stack([quads_b, quads_c, quads_d], -1).reshape(-1, 3)])
    top = np.stack([np.zeros(cols, int), index[0], right[0]], -1)
    bottom_pole = positions.shape[0] - 1
    bottom = np.stack([np.full(cols, bottom_pole), right[-1], index[-1]], -1)
    return positions, np.concatenate([top, body, bottom]).astype(np.int64)


def known_colour(position: torch.Tensor) -> torch.Tensor:
    phase = torch.stack([3 * position[..., 0] + 0.3, 4 * position[..., 1] + 1.0, 5 * position[..., 2] - 0.5], dim=-1)
    return 0.5 + 0.4 * torch.sin(phase)


def timed(device: torch.device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda, mps); default cpu")
    parser.add_argument("--faces", type=int, default=500_000, help="faces of the mesh for the raster test")
    parser.add_argument("--view-size", type=int, default=512, help="view resolution in pixels (square)")
    parser.add_argument("--bake-faces", type=int, default=100_000, help="faces of the mesh for the bake test")
    parser.add_argument("--texture-size", type=int, default=2048, help="texture resolution in texels (square)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best is printed")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    views = official_views()
    positions_np, faces_np = bumpy_sphere(args.faces)
    positions = fit_to_views(torch.from_numpy(positions_np).to(device))
    faces = torch.from_numpy(faces_np).to(device)
    normals = vertex_normals(positions, faces)
    best = min(timed(device, lambda: [render_view(positions, faces, v, args.view_size, normals=normals) for v in views])[1]
               for _ in range(args.repeats))
    print(f"raster: {faces.shape[0]} faces, 6 views at {args.view_size}^2: {best:.3f} s ({best / 6 * 1000:.0f} ms a view)")

    positions_np, faces_np = bumpy_sphere(args.bake_faces)
    positions = fit_to_views(torch.from_numpy(positions_np))
    uv_mesh, unwrap_s = timed(torch.device("cpu"), lambda: unwrap(positions.numpy(), faces_np, texture_size=args.texture_size))
    positions, faces = positions.to(device), torch.from_numpy(faces_np).to(device)
    normals = vertex_normals(positions, faces)
    images = []
    for view in views:
        maps = render_view(positions, faces, view, args.view_size, normals=normals)
        images.append(torch.where(maps.mask.unsqueeze(-1), known_colour(maps.position), torch.ones(3, device=device)))

    def bake():
        texels = rasterize_uv(torch.from_numpy(uv_mesh.positions).to(device), torch.from_numpy(uv_mesh.faces).to(device),
                              torch.from_numpy(uv_mesh.uvs).to(device),
                              normals[torch.from_numpy(uv_mesh.source_vertex).to(device)], args.texture_size)
        baked = bake_views(texels, positions, faces, views, images)
        return texels, baked, fill_texture(baked, texels, uv_mesh)

    runs = [timed(device, bake) for _ in range(args.repeats)]
    (texels, baked, _), bake_s = min(runs, key=lambda run: run[1])
    seen = baked.seen
    error = baked.texture[seen] - known_colour(texels.position[seen])
    psnr = float(10 * torch.log10(1 / (error**2).mean()))
    print(f"bake: {faces.shape[0]} faces at {args.texture_size}^2 from 6 views at {args.view_size}^2: {bake_s:.3f} s "
          f"(UV raster + bake + fill; unwrap {unwrap_s:.1f} s apart), {int(seen.sum())} of {int(texels.mask.sum())} "
          f"chart texels seen, PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    main()
