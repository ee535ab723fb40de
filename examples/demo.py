"""The whole product, headless: from a picture to a coloured mesh in a saved Blender scene.

    python examples/demo.py [--image examples/snowman.png] [--out demo-output]

1. builds the add-on zip with build.py (the add-on with the backend inside);
2. starts Blender (the bpy module) with its user folders inside --out, so nothing touches
   your own Blender configuration, and installs and enables the zip as an extension;
3. the add-on launches the backend with this Python, exactly as it does for an artist;
4. generates from the picture with the chosen model (Nano by default: it ships with the
   backend and runs offline on any CPU), pumping the add-on's main-thread loop until the
   mesh has landed in the scene;
5. saves the scene as scene.blend and a rendered preview.png (Cycles on the CPU), and writes
   demo.json with what happened.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).resolve().parent
PACKAGE = "bl_ext.user_default.hunyuan3d_blender"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=EXAMPLES / "snowman.png", help="input picture (default examples/snowman.png)")
    parser.add_argument("--model", default="nano", help="pipeline to run (default nano)")
    parser.add_argument("--weights", type=Path, help="weights folder (default: the Hugging Face cache; Nano ships with the backend)")
    parser.add_argument("--device", default="auto", help="backend device: auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything it writes (default demo-output)")
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples for the preview (default 32)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the mesh (default 600)")
    return parser.parse_args()


def build_addon(out: Path) -> Path:
    done = subprocess.run([sys.executable, str(ROOT / "build.py"), "--output-dir", str(out / "dist")],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: build.py failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def pump_until(app, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: gave up waiting for {what} after {timeout:.0f} s")
        app.pump()
        time.sleep(0.01)


def main() -> int:
    args = parse_args()
    if not args.image.is_file():
        raise SystemExit(f"error: {args.image}: no such picture (pass --image)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    zip_path = build_addon(out)
    print(f"built {zip_path.name}")

    # Blender reads these once, when bpy is first imported.
    os.environ["BLENDER_USER_RESOURCES"] = str(out / "blender-user")
    os.environ["HY3D_HOME"] = str(out / "hy3d-home")
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    if result != {"FINISHED"} or PACKAGE not in bpy.context.preferences.addons:
        raise SystemExit("error: Blender could not install the add-on zip")
    app = sys.modules[f"{PACKAGE}.app"]
    progress_text = sys.modules[f"{PACKAGE}.status_text"].progress_text
    prefs = bpy.context.preferences.addons[PACKAGE].preferences
    prefs.connection = "LAUNCH"
    prefs.python_path = sys.executable
    prefs.device = args.device
    prefs.output_dir = str(out / "results")
    if args.weights:
        prefs.weights_dir = str(args.weights.resolve())
    print("installed and enabled the add-on; starting the backend")

    bpy.ops.hy3d.connect()
    pump_until(app, lambda: app.session.phase.value != "starting", 120, "the backend to start")
    if app.session.phase.value != "ready":
        problem = app.session.problem
        raise SystemExit(f"error: {problem.message if problem else 'the backend did not start'}"
                         + (f"\nhint: {problem.hint}" if problem and problem.hint else ""))
    models = [p["name"] for p in app.session.pipelines()]
    if args.model not in models:
        raise SystemExit(f"error: the backend has no model {args.model!r} (it has: {', '.join(models)})")

    inputs = bpy.context.window_manager.hy3d
    inputs.pipeline = args.model
    inputs.source = "IMAGE"
    inputs.image_path = str(args.image.resolve())
    generate_started = time.monotonic()
    bpy.ops.hy3d.generate()
    progress_seen = []

    def finished() -> bool:
        if app.session.job is not None:
            text = progress_text(app.session.job)
            if not progress_seen or progress_seen[-1] != text:
                progress_seen.append(text)
                print(f"  {text}")
        return app.session.job is None

    pump_until(app, finished, args.timeout, "the mesh")
    outcome = app.session.last
    if outcome is None or outcome.kind != "result":
        raise SystemExit(f"error: {outcome.message if outcome else 'no result'}" + (f"\nhint: {outcome.hint}" if outcome and outcome.hint else ""))
    obj = bpy.context.view_layer.objects.active
    generate_seconds = time.monotonic() - generate_started
    print(f"{outcome.message}")

    add_camera_and_light(bpy, obj)
    blend = out / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    preview = out / "preview.png"
    render_preview(bpy, preview, args.samples)
    app.stop()  # asks the backend the add-on launched to shut down (it exits on its own)

    facts = {
        "image": str(args.image), "model": args.model, "object": obj.name,
        "vertices": len(obj.data.vertices), "faces": len(obj.data.polygons),
        "location": list(obj.location), "blend": str(blend), "preview": str(preview),
        "generate_seconds": round(generate_seconds, 2), "total_seconds": round(time.monotonic() - started, 2),
    }
    (out / "demo.json").write_text(json.dumps(facts, indent=2))
    print(f"saved {blend} and {preview} ({facts['total_seconds']:.0f} s in all)")
    return 0


def add_camera_and_light(bpy, obj) -> None:
    """A three-quarter view that frames the object, a sun and a soft grey world."""
    from mathutils import Vector

    scene = bpy.context.scene
    corners = [obj.matrix_world @ Vector(corner) for corner in obj.bound_box]
    centre = sum(corners, Vector()) / 8
    radius = max((c - centre).length for c in corners)
    camera = bpy.data.objects.new("Preview Camera", bpy.data.cameras.new("Preview Camera"))
    scene.collection.objects.link(camera)
    camera.location = centre + Vector((1.0, -1.6, 0.9)).normalized() * radius * 3.2
    camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera
    sun = bpy.data.objects.new("Preview Sun", bpy.data.lights.new("Preview Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.8, 0.2, 0.6)
    scene.collection.objects.link(sun)
    world = scene.world or bpy.data.worlds.new("World")
    scene.world = world
    if world.node_tree is None:
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.6, 0.6, 0.62, 1.0)


def render_preview(bpy, path: Path, samples: int) -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x = scene.render.resolution_y = 512
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


if __name__ == "__main__":
    sys.exit(main())
