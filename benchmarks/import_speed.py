"""How fast a generated mesh reaches the scene, and how light the add-on's pump is.

    python benchmarks/import_speed.py            (Python 3.11 with the bpy wheel, like the tests)

1. A 1,000,000-triangle mesh with per-vertex colours, as the backend sends it (Y up,
   float32 positions, int32 faces, float32 RGBA), goes from raw arrays to a linked,
   coloured object through the add-on's path, and through the Hunyuan3D-2 add-on's path
   (write the mesh as GLB, then ``bpy.ops.import_scene.gltf``), in the same process. The
   add-on's path is timed in its two parts: ``meshdata.from_wire`` on the reader thread
   (frame, colours, edges) and ``importer.build_object`` on Blender's main thread; the
   main-thread part is what Blender users feel, and the Hunyuan3D-2 path runs wholly there.
   Each object made by the add-on's path is read back: positions, corners, face starts, edges
   and colours equal the prepared arrays element for element, every face is smooth, and
   ``validate()`` changes nothing. Then the face starts alone, set face by face
   (``foreach_set``) and copied at once (``importer.set_face_starts``), and one more
   ``build_object`` under cProfile, call by call.
   With ``--texture-size N`` the mesh is a textured result instead (the texture stage's output):
   per-vertex UVs, an N x N base colour PNG, no colours; the add-on's path adds a UV map and a
   material with the PNG packed, the GLB path imports the same texture.
2. The add-on, installed from the zip build.py makes, runs a 200-step job on a real backend
   (the test pipeline) while every ``pump()`` call is timed.
Blender's user folders point at a temporary directory for the run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "bl_ext.user_default.hunyuan3d_blender"


def install_addon(folder: str) -> None:
    """Build the add-on and install it, enabled, into a Blender whose user files and backend home are in ``folder``."""
    os.environ["BLENDER_USER_RESOURCES"] = os.path.join(folder, "blender-user")
    os.environ["HY3D_HOME"] = os.path.join(folder, "hy3d-home")
    built = subprocess.run([sys.executable, str(ROOT / "build.py"), "--output-dir", folder],
                           capture_output=True, text=True, check=True).stdout.strip()
    import bpy

    bpy.ops.extensions.package_install_files(filepath=built, repo="user_default", enable_on_install=True)


def grid_mesh(rows: int, cols: int):
    """A wavy height field of ``2 * rows * cols`` triangles with colours, Y up like the backend's output."""
    import numpy as np

    u, v = np.meshgrid(np.linspace(-1, 1, cols + 1, dtype=np.float32), np.linspace(-1, 1, rows + 1, dtype=np.float32))
    height = 0.1 * np.sin(6 * u) * np.cos(4 * v)
    positions = np.stack([u, height, v], axis=-1).reshape(-1, 3)
    index = np.arange((rows + 1) * (cols + 1), dtype=np.int32).reshape(rows + 1, cols + 1)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    colors = np.empty((len(positions), 4), dtype=np.float32)
    colors[:, 0] = (u.reshape(-1) + 1) / 2
    colors[:, 1] = (v.reshape(-1) + 1) / 2
    colors[:, 2] = height.reshape(-1) * 5 + 0.5
    colors[:, 3] = 1.0
    return positions, np.ascontiguousarray(faces), colors


def texture_png(size: int) -> bytes:
    """A size x size RGB picture with detail everywhere (so PNG can't shrink it to nothing), PNG-encoded."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def remove_object(obj) -> None:
    import bpy

    mesh = obj.data
    bpy.data.objects.remove(obj)
    bpy.data.meshes.remove(mesh)


def time_direct(arrays: dict, repeats: int, textures: dict[str, bytes]) -> tuple[list[float], list[float]]:
    """Seconds of the reader thread's part and of the main thread's part, per run."""
    import bpy

    meshdata, importer = sys.modules[f"{PACKAGE}.meshdata"], sys.modules[f"{PACKAGE}.importer"]
    reader, main_thread = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        prepared = meshdata.from_wire(arrays, "y_up", textures)
        handed_over = time.perf_counter()
        obj = importer.build_object(bpy.context, prepared, "Direct")
        finished = time.perf_counter()
        reader.append(handed_over - started)
        main_thread.append(finished - handed_over)
        check_object(obj.data, prepared, len(arrays["faces"]), textured=bool(textures))
        remove_object(obj)
    return reader, main_thread


def time_face_starts(arrays: dict, repeats: int, textures: dict[str, bytes]) -> tuple[list[float], list[float]]:
    """Seconds to give a new mesh its face starts: ``foreach_set("loop_start")`` against ``importer.set_face_starts``."""
    import bpy
    import numpy as np

    meshdata, importer = sys.modules[f"{PACKAGE}.meshdata"], sys.modules[f"{PACKAGE}.importer"]
    face_starts = meshdata.from_wire(arrays, "y_up", textures).face_starts
    setters = {"foreach_set": lambda mesh: mesh.polygons.foreach_set("loop_start", face_starts),
               "set_face_starts": lambda mesh: importer.set_face_starts(mesh, face_starts)}
    times = {name: [] for name in setters}
    for _ in range(repeats):
        for name, setter in setters.items():
            mesh = bpy.data.meshes.new(name)
            mesh.loops.add(3 * len(face_starts))
            mesh.polygons.add(len(face_starts))
            started = time.perf_counter()
            setter(mesh)
            times[name].append(time.perf_counter() - started)
            written = np.empty_like(face_starts)
            mesh.polygons.foreach_get("loop_start", written)
            assert np.array_equal(written, face_starts), name
            bpy.data.meshes.remove(mesh)
    return times["foreach_set"], times["set_face_starts"]


def profile_build_object(arrays: dict, lines: int, textures: dict[str, bytes]) -> list[str]:
    """One more build_object under cProfile: the calls that took the most time, own time first."""
    import bpy

    meshdata, importer = sys.modules[f"{PACKAGE}.meshdata"], sys.modules[f"{PACKAGE}.importer"]
    prepared = meshdata.from_wire(arrays, "y_up", textures)
    profiler = cProfile.Profile()
    obj = profiler.runcall(importer.build_object, bpy.context, prepared, "Profiled")
    remove_object(obj)
    rows = sorted(pstats.Stats(profiler).stats.items(), key=lambda item: item[1][2], reverse=True)
    return [f"{own * 1000:8.2f} ms own, {calls:3d} calls  {call_name(*function)}"
            for function, (_, calls, own, _, _) in rows[:lines]]


def call_name(filename: str, line: int, function: str) -> str:
    """A profiled call as module:line(function), or the built-in's name, without the folder it ran from."""
    return function if filename == "~" else f"{Path(filename).name}:{line}({function})"


def check_object(mesh, prepared, face_count: int, textured: bool) -> None:
    """The mesh holds the prepared arrays exactly (a textured one its UV map and packed image instead of colours),
    its faces are smooth, and ``validate()`` changes nothing."""
    import numpy as np

    def read(collection, name: str, like: np.ndarray) -> np.ndarray:
        values = np.empty(like.size, dtype=like.dtype)
        collection.foreach_get(name, values)
        return values.reshape(like.shape)

    assert len(mesh.polygons) == face_count and len(mesh.vertices) == prepared.vertex_count
    assert np.array_equal(read(mesh.attributes["position"].data, "vector", prepared.positions), prepared.positions)
    assert np.array_equal(read(mesh.loops, "vertex_index", prepared.corner_verts), prepared.corner_verts)
    assert np.array_equal(read(mesh.polygons, "loop_start", prepared.face_starts), prepared.face_starts)
    assert np.array_equal(read(mesh.edges, "vertices", prepared.edge_verts), prepared.edge_verts)
    if textured:
        assert len(mesh.uv_layers) == 1 and mesh.materials[0].node_tree.nodes["Image Texture"].image.packed_file is not None
    else:
        assert np.array_equal(read(mesh.color_attributes.active_color.data, "color", prepared.colors), prepared.colors)
    assert read(mesh.polygons, "use_smooth", np.empty(face_count, dtype=bool)).all()
    assert not mesh.validate()


def time_glb(arrays: dict, repeats: int, folder: str, textures: dict[str, bytes]) -> list[float]:
    import bpy

    sys.path.insert(0, str(ROOT))
    from backend.mesh import Material, Mesh
    from backend.mesh.export import encode_glb

    material = Material.from_png(textures) if textures else None

    times = []
    for i in range(repeats):
        path = os.path.join(folder, f"mesh-{i}.glb")
        before = set(bpy.data.objects)
        started = time.perf_counter()
        with open(path, "wb") as f:
            f.write(encode_glb(Mesh(arrays["positions"], arrays["faces"], arrays.get("colors"), uvs=arrays.get("uvs"), material=material)))
        bpy.ops.import_scene.gltf(filepath=path)
        times.append(time.perf_counter() - started)
        for obj in set(bpy.data.objects) - before:
            remove_object(obj)
    return times


def time_pump(steps: int, step_delay: float, folder: str) -> tuple[list[float], float]:
    """Durations of every pump() while the job streams progress, and of the tick that imports the result."""
    import bpy

    app = sys.modules[f"{PACKAGE}.app"]
    prefs = bpy.context.preferences.addons[PACKAGE].preferences
    prefs.python_path = sys.executable
    prefs.extra_args = "--pipelines-from fixture_pipelines"
    prefs.extra_pythonpath = str(ROOT / "tests")
    prefs.output_dir = os.path.join(folder, "outputs")
    bpy.ops.hy3d.connect()
    while app.session.phase.value == "starting":
        app.pump()
        time.sleep(0.01)
    assert app.session.phase.value == "ready", app.session.problem
    inputs = bpy.context.window_manager.hy3d
    inputs.pipeline, inputs.source, inputs.prompt = "test-shape", "TEXT", "benchmark"
    inputs.params["steps"].set(steps)
    inputs.params["step_delay"].set(step_delay)
    bpy.ops.hy3d.generate()
    during, import_tick = [], 0.0
    while app.session.job is not None:
        started = time.perf_counter()
        app.pump()
        elapsed = time.perf_counter() - started
        if app.session.job is None:
            import_tick = elapsed
        else:
            during.append(elapsed)
        time.sleep(0.005)
    assert app.session.last.kind == "result", app.session.last
    bpy.ops.hy3d.disconnect()
    return during, import_tick


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500, help="grid rows; triangles = 2 * rows * cols (default 500)")
    parser.add_argument("--cols", type=int, default=1000, help="grid columns (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each import path and of each way to set the face starts (default 3)")
    parser.add_argument("--profile-lines", type=int, default=8, help="calls listed from the profiled build_object (default 8)")
    parser.add_argument("--steps", type=int, default=200, help="steps of the streamed job (default 200)")
    parser.add_argument("--step-delay", type=float, default=0.02, help="seconds per job step (default 0.02)")
    parser.add_argument("--texture-size", type=int, default=0,
                        help="import a textured result with an N x N base colour texture instead of vertex colours (default 0: colours)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        install_addon(folder)
        import bpy

        positions, faces, colors = grid_mesh(args.rows, args.cols)
        if args.texture_size:
            arrays = {"positions": positions, "faces": faces, "uvs": (positions[:, [0, 2]] + 1) / 2}
            textures = {"base_color": texture_png(args.texture_size)}
            print(f"mesh: {len(faces):,} triangles, {len(positions):,} vertices, UVs, a {args.texture_size}^2 base colour PNG "
                  f"({len(textures['base_color']) / 2**20:.1f} MiB)")
        else:
            arrays, textures = {"positions": positions, "faces": faces, "colors": colors}, {}
            print(f"mesh: {len(faces):,} triangles, {len(positions):,} vertices, float32 RGBA colours")
        reader, main_thread = time_direct(arrays, args.repeats, textures)
        glb = time_glb(arrays, args.repeats, folder, textures)
        print(f"add-on, reader thread (from_wire: frame, colours or UVs, edges): best {min(reader):.3f} s, "
              f"median {statistics.median(reader):.3f} s")
        print(f"add-on, main thread (build_object: arrays -> linked coloured or textured object): best {min(main_thread):.3f} s, "
              f"median {statistics.median(main_thread):.3f} s  (goal <= 0.1 s)")
        print(f"Hunyuan3D-2 path, all on the main thread (write GLB + import_scene.gltf): best {min(glb):.3f} s, "
              f"median {statistics.median(glb):.3f} s")
        print(f"main-thread speed-up: {statistics.median(glb) / statistics.median(main_thread):.1f}x by median  (goal >= 10x)")
        face_by_face, one_copy = time_face_starts(arrays, args.repeats, textures)
        per_face = statistics.median(face_by_face) / len(faces) * 1e9
        print(f"face starts of {len(faces):,} faces: foreach_set(\"loop_start\") median {statistics.median(face_by_face):.4f} s "
              f"({per_face:.0f} ns a face), set_face_starts median {statistics.median(one_copy):.4f} s")
        print("build_object once more under cProfile (the calls with the most own time):")
        for line in profile_build_object(arrays, args.profile_lines, textures):
            print("  " + line)
        during, import_tick = time_pump(args.steps, args.step_delay, folder)
        print(f"pump() during a {args.steps}-step job: {len(during)} calls, longest {max(during) * 1000:.2f} ms, "
              f"median {statistics.median(during) * 1000:.3f} ms  (goal <= 5 ms); "
              f"the tick that imported the result took {import_tick * 1000:.1f} ms")
        bpy.ops.preferences.addon_disable(module=PACKAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
