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
GRID = 80
BOUND = 0.6

pytestmark = pytest.mark.skipif(not bundled_weights().is_file() or not (EXAMPLES / "nano_examples.json").is_file(),
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
    """Inside-or-on voxels of a closed mesh: mark the voxels its surface passes through, then fill."""
    from scipy.ndimage import binary_fill_holes

    rng = np.random.default_rng(0)
    triangles = positions[faces]
    cell = 2 * BOUND / (GRID - 1)
    areas = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    count = int(areas.sum() / (cell / 3) ** 2)
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    a, b = rng.random((2, count, 1))
    flip = a + b > 1
    a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    t = triangles[chosen]
    points = t[:, 0] + a * (t[:, 1] - t[:, 0]) + b * (t[:, 2] - t[:, 0])
    index = np.clip(np.round((points + BOUND) / cell).astype(int), 0, GRID - 1)
    shell = np.zeros((GRID,) * 3, dtype=bool)
    shell[index[:, 0], index[:, 1], index[:, 2]] = True
    return binary_fill_holes(shell)


def test_demo_puts_the_right_shape_in_a_saved_scene(tmp_path):
    import torch

    from backend.pipelines.nano.data import aligned_shape

    example = json.loads((EXAMPLES / "nano_examples.json").read_text())[0]
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
