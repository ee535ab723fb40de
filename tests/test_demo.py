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


@needs_nano
def test_demo_puts_the_right_shape_in_a_saved_scene(tmp_path):
    from backend.pipelines.nano import metrics
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
    shape, _, _ = aligned_shape(example["seed"])
    iou = metrics.mesh_iou(model_frame, saved["faces"], shape, resolution=GRID)
    assert iou >= SHIPPED_IOU, f"IoU {iou:.3f} against the true shape of {image.name}"
