"""Main-thread time of each finishing step the add-on runs after an import, against the import itself.

    python benchmarks/finishing.py [--faces 40000 200000] [--repeats 3] [--quadriflow-max-faces 40000]

Python 3.11 with the bpy wheel, like the tests. The add-on, built by build.py, is installed in
a Blender whose user folders point at a temporary directory. For each size, a closed, bumpy
surface is extracted from an analytic signed distance grid by the backend's own mesh code
(marching cubes, clean-up, decimation to the size: what a model sends), coloured, and put in
the scene through the add-on's path (``meshdata.from_wire``, off the main thread in the
add-on, then ``importer.build_object`` on it). Then the add-on's ``Finisher`` finishes fresh
imports three ways, ``--repeats`` times each (QuadriFlow once), and every ``step`` call (one
operation, one tick of the add-on's timer) is timed; the median and the best are printed, and
the median step against the median import:
1. apply scale (the object scaled by 2 first), decimate to half the faces, origin at the
   bottom centre, 3 LODs;
2. voxel remesh, the voxel size chosen for about as many quads as the mesh has vertices;
3. QuadriFlow to half the triangles, only up to ``--quadriflow-max-faces`` (it takes minutes
   beyond that on a small machine);
4. 3 LODs of the imported mesh made in Blender ("Blender LOD k"), against
5. the same 3 LODs made by the backend (``backend.mesh.lods.make_lods``, as a job with ``lods``
   does; its time is printed too, though it is not Blender's) and only imported on the main
   thread ("backend LOD k"; ``meshdata.lods_from_wire`` runs on the reader thread in the add-on).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from import_speed import PACKAGE, install_addon  # noqa: E402

BOUND = 0.6


def bumpy_surface(faces: int) -> dict:
    """Wire arrays (Y up, float32, sRGB colours) of a closed bumpy blob, decimated to ``faces`` triangles."""
    from backend.mesh import mesh_from_grid

    resolution = int(np.clip(np.sqrt(faces) * 0.75, 96, 400))  # marching cubes makes some 2x the faces asked
    axis = np.linspace(-BOUND, BOUND, resolution, dtype=np.float32)
    x, y, z = axis[:, None, None], axis[None, :, None], axis[None, None, :]
    distance = np.sqrt(x * x + y * y + z * z) - 0.42 - 0.06 * np.sin(7 * x) * np.sin(7 * y) * np.sin(7 * z)
    mesh = mesh_from_grid(distance, BOUND, max_faces=faces)
    colors = np.concatenate([0.5 + mesh.positions / (2 * BOUND), np.ones((len(mesh.positions), 1))], axis=1)
    return {"positions": np.ascontiguousarray(mesh.positions, dtype=np.float32),
            "faces": np.ascontiguousarray(mesh.faces, dtype=np.int32),
            "colors": np.ascontiguousarray(np.clip(colors, 0, 1), dtype=np.float32)}


def surface_area(arrays: dict) -> float:
    corners = arrays["positions"][arrays["faces"]]
    return float(np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1).sum() / 2)


def timed_import(arrays: dict):
    import bpy

    meshdata, importer = sys.modules[f"{PACKAGE}.meshdata"], sys.modules[f"{PACKAGE}.importer"]
    prepared = meshdata.from_wire(arrays, "y_up")
    started = time.perf_counter()
    obj = importer.build_object(bpy.context, prepared, "Finishing benchmark")
    return obj, time.perf_counter() - started


def backend_lods(arrays: dict, count: int) -> tuple[tuple, float]:
    """The backend's ``count`` LODs of the mesh, laid out for Blender as the reader thread does, and the backend's time."""
    from backend.mesh import Mesh
    from backend.mesh.lods import make_lods

    started = time.perf_counter()
    levels = make_lods(Mesh(arrays["positions"], arrays["faces"], arrays["colors"]), count)
    made_s = time.perf_counter() - started
    wire = {f"lod{level}.{buf.name}": buf.to_array() for level, lod in enumerate(levels, start=1) for buf in lod.to_buffers()}
    return sys.modules[f"{PACKAGE}.meshdata"].lods_from_wire(wire, count, "y_up"), made_s


def timed_finishing(arrays: dict, options, lods: tuple = (), label: str = "") -> tuple[float, list[tuple[str, float]], str]:
    """The import's main-thread time, then each finishing step's (named with ``label`` first), and the outcome message.

    ``lods``: the backend's LODs, imported instead of made in Blender.
    """
    import bpy

    finishing = sys.modules[f"{PACKAGE}.finishing"]
    obj, import_s = timed_import(arrays)
    if options.apply_scale:
        obj.scale = (2.0, 2.0, 2.0)
    finisher = finishing.Finisher()
    finisher.start(obj, options, lods)
    steps = []
    while finisher.running:
        name = label + finisher.message.removeprefix("Finishing: ")
        started = time.perf_counter()
        finisher.step(bpy.context)
        steps.append((name, time.perf_counter() - started))
    assert finisher.last.kind == "done", finisher.last
    for leftover in [o for o in bpy.data.objects if o.name.startswith("Finishing benchmark")]:
        bpy.data.objects.remove(leftover)
    for mesh in [m for m in bpy.data.meshes if m.users == 0]:
        bpy.data.meshes.remove(mesh)
    return import_s, steps, finisher.last.message


def report(name: str, times: list[float], import_s: float) -> None:
    median = statistics.median(times)
    print(f"  {name:<20} median {median * 1000:9.1f} ms, best {min(times) * 1000:9.1f} ms  "
          f"({median / import_s:7.1f}x the import)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[40000, 200000], help="mesh sizes in triangles (default 40000 200000)")
    parser.add_argument("--repeats", type=int, default=3, help="finishings of each kind but QuadriFlow (default 3)")
    parser.add_argument("--quadriflow-max-faces", type=int, default=40000,
                        help="run QuadriFlow only on meshes up to this many triangles (default 40000)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory() as folder:
        install_addon(folder)
        import bpy

        options = sys.modules[f"{PACKAGE}.finishing_options"].FinishingOptions
        print(f"Blender {bpy.app.version_string}")
        for faces in args.faces:
            arrays = bumpy_surface(faces)
            count = len(arrays["faces"])
            voxel_size = (surface_area(arrays) / len(arrays["positions"])) ** 0.5
            runs = [options(face_budget=count // 2, lods=3, origin_bottom=True, apply_scale=True),
                    options(quads="VOXEL", voxel_size=voxel_size)]
            runs = [(run, (), "") for run in runs]
            if count <= args.quadriflow_max_faces:
                runs.append((options(quads="QUADRIFLOW"), (), ""))
            lods, made_s = backend_lods(arrays, 3)
            runs += [(options(lods=3), (), "Blender "), (options(lods=3), lods, "backend ")]
            print(f"\nmesh: {count:,} triangles, {len(arrays['positions']):,} vertices")
            print(f"  backend made 3 LODs ({'/'.join(str(lod.face_count) for lod in lods)} triangles) in {made_s * 1000:.1f} ms "
                  "(in the backend process, not on Blender's main thread)")
            imports, steps, outcomes = [], collections.defaultdict(list), []
            for run, lods, label in runs:
                for _ in range(1 if run.quads == "QUADRIFLOW" else args.repeats):
                    import_s, run_steps, outcome = timed_finishing(arrays, run, lods, label)
                    imports.append(import_s)
                    for name, seconds in run_steps:
                        steps[name].append(seconds)
                outcomes.append(outcome)
            import_s = statistics.median(imports)
            report("import (main thread)", imports, import_s)
            for name, times in steps.items():
                report(name, times, import_s)
            for outcome in outcomes:
                print(f"  -> {outcome}")
            if count > args.quadriflow_max_faces:
                print(f"  QuadriFlow remesh: not run above {args.quadriflow_max_faces:,} triangles (--quadriflow-max-faces)")
        bpy.ops.preferences.addon_disable(module=PACKAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
