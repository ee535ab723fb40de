"""The README's main job, end to end: examples/demo.py in real Blender with the real backend and Nano.

The shape that lands in the saved scene is compared with the true shape of the example
picture (rebuilt from its seed): the volumetric IoU must reach the bar Nano ships with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.pipelines.nano.pipeline import bundled_weights

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHIPPED_IOU = 0.6
README_EXAMPLE = "snowman.png"  # the picture the README's first command (examples/demo.py's default) turns into a mesh
GRID = 80
BOUND = 0.6

needs_nano = pytest.mark.skipif(not bundled_weights().is_file() or not (EXAMPLES / "nano_examples.json").is_file(),
                                reason="the trained Nano weights and the example pictures are not in this checkout")

DUMP_OBJECT = """
import sys, bpy, numpy as np
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
obj = next(o for o in bpy.data.objects if o.type == "MESH")
mesh = obj.data
positions = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
mesh.vertices.foreach_get("co", positions)
corners = np.empty(len(mesh.loops), dtype=np.int32)
mesh.loops.foreach_get("vertex_index", corners)
np.savez(sys.argv[2], positions=positions.reshape(-1, 3), faces=corners.reshape(-1, 3), location=np.array(obj.location))
"""


def solid_voxels(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Voxel centres inside a closed mesh, by the parity of its crossings along Z for each (x, y) column."""
    centres = np.linspace(-BOUND, BOUND, GRID)
    cell = centres[1] - centres[0]
    # A tiny irrational offset keeps the columns off the mesh's vertices and edges, where crossings would count twice.
    offset = np.array([1e-4 * np.sqrt(2), 1e-4 * np.sqrt(3)])
    triangles = positions[faces].astype(np.float64)
    # Pair each triangle with the columns inside its XY bounding box.
    low = np.clip(np.ceil((triangles[:, :, :2].min(axis=1) - offset + BOUND) / cell), 0, GRID).astype(int)
    high = np.clip(np.floor((triangles[:, :, :2].max(axis=1) - offset + BOUND) / cell), -1, GRID - 1).astype(int)
    spans = np.maximum(high - low + 1, 0)
    counts = spans[:, 0] * spans[:, 1]
    triangle = np.repeat(np.arange(len(triangles)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ix = low[triangle, 0] + k // spans[triangle, 1]
    iy = low[triangle, 1] + k % spans[triangle, 1]
    a, b, c = (triangles[triangle, i] for i in range(3))
    e1, e2 = b - a, c - a
    px, py = centres[ix] + offset[0] - a[:, 0], centres[iy] + offset[1] - a[:, 1]
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (px * e2[:, 1] - e2[:, 0] * py) / det
        v = (e1[:, 0] * py - px * e1[:, 1]) / det
        hit = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1)
    column = (ix * GRID + iy)[hit]
    height = (a[:, 2] + u * e1[:, 2] + v * e2[:, 2])[hit]
    order = np.lexsort((height, column))
    column, height = column[order], height[order]
    bounds = np.searchsorted(column, np.arange(GRID * GRID + 1))
    solid = np.zeros((GRID * GRID, GRID), dtype=bool)
    for index in np.nonzero(np.diff(bounds))[0]:
        solid[index] = np.searchsorted(height[bounds[index] : bounds[index + 1]], centres) % 2 == 1
    return solid.reshape(GRID, GRID, GRID)


def test_the_inside_test_measures_a_sphere():
    from fixture_pipelines import icosphere

    positions, faces = icosphere(4, 0.4)
    solid = solid_voxels(positions, faces)
    centres = np.linspace(-BOUND, BOUND, GRID)
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    truth = x**2 + y**2 + z**2 < 0.4**2
    assert (solid & truth).sum() / (solid | truth).sum() > 0.97
    assert not solid_voxels(positions + 0.3, faces)[truth & (x < -0.2)].any()


@needs_nano
def test_demo_puts_the_right_shape_in_a_saved_scene(tmp_path):
    import torch

    from backend.pipelines.nano.data import aligned_shape

    example = next(e for e in json.loads((EXAMPLES / "nano_examples.json").read_text()) if e["image"] == README_EXAMPLE)
    image = EXAMPLES / example["image"]
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    done = subprocess.run([sys.executable, str(EXAMPLES / "demo.py"), "--image", str(image), "--out", str(out), "--samples", "4",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads((out / "demo.json").read_text())
    assert facts["faces"] > 1000 and (out / "scene.blend").is_file()
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dump = tmp_path / "object.npz"
    done = subprocess.run([sys.executable, "-c", DUMP_OBJECT, str(out / "scene.blend"), str(dump)],
                          capture_output=True, text=True, timeout=120, env={**env, "BLENDER_USER_RESOURCES": str(tmp_path / "u")}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = np.load(dump)
    blender = saved["positions"]
    # Blender's Z-up local coordinates back to the model's frame: Blender (x, y, z) = model (b, -a, c).
    model_frame = np.stack([-blender[:, 1], blender[:, 0], blender[:, 2]], axis=1)
    predicted = solid_voxels(model_frame, saved["faces"])

    shape, _, _ = aligned_shape(example["seed"])
    axis = torch.linspace(-BOUND, BOUND, GRID)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    with torch.inference_mode():
        truth = (shape.sdf(grid) < 0).reshape((GRID,) * 3).numpy()
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou >= SHIPPED_IOU, f"IoU {iou:.3f} against the true shape of {image.name}"
