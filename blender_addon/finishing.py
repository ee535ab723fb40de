"""Finishing a result in Blender after its import: one operation per tick of the add-on's timer.

The import puts the object in the scene at once; the finishing its recipe asks for (apply
scale, decimate to the face budget, QuadriFlow or voxel remesh, origin at the bottom centre,
LOD copies) then runs as separate steps, one per ``Finisher.step`` call, so Blender redraws
between them and the panel shows which step is running. Decimation and LODs apply a Decimate
modifier through ``Mesh.new_from_object``; the remeshes are Blender's own operators. LODs the
backend made (``FinishingOptions.backend_lods``) are only imported, one per step, the way the
result itself is.

A step that fails, or Cancel, puts the object back as it was when finishing began (mesh and
transform) and removes the LOD copies made so far; the panel shows why. Only the finished
state is pushed to the undo stack, so Ctrl+Z takes back the whole finishing at once.

Objects and meshes are looked up by name at every step: a reference kept across ticks could
outlive an undo or a file load.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import bmesh
import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty
from mathutils import Matrix, Vector

from .backend.protocol import MAX_LODS
from .errors import AddonError
from .finishing_options import FinishingOptions, faces_summary
from .importer import build_mesh
from .meshdata import MeshArrays
from .tasks import Outcome

MODIFIER_NAME = "Hunyuan3D finishing"
VOXEL_FACE_LIMIT = 5_000_000  # a voxel remesh estimated above this many faces is refused: it could exhaust memory
# QuadriFlow refuses a whole mesh when one edge's ends differ by less than 1e-4 in every coordinate (it counts
# that edge as zero length); marching cubes leaves such edges, so vertices that close are merged first.
QUADRIFLOW_WELD_DISTANCE = 2e-4


class FinishingStepError(AddonError):
    """A finishing step that could not be done (the object is put back as it was before finishing)."""


class HY3D_FinishingInputs(bpy.types.PropertyGroup):
    """The panel's finishing options for the next Generate; kept on each result with its other settings."""

    face_budget: IntProperty(
        name="Face Budget", default=0, min=0, soft_max=1_000_000,
        description="Decimate the result to at most this many faces (0: keep them all). A model with a Max Faces "
                    "parameter decimates in the backend instead, so a smaller mesh is sent (not with QuadriFlow, "
                    "which aims at the budget itself)")
    quads: EnumProperty(name="Quads", items=(
        ("NONE", "None", "Keep the triangles"),
        ("QUADRIFLOW", "QuadriFlow", "Blender's QuadriFlow remesh to quads, aiming at the face budget (or half the "
                                     "triangles). It blocks Blender while it runs: 1 to 2.5 minutes for 40,000 "
                                     "triangles on 2 CPU cores (docs/benchmarks.md). Needs a manifold mesh"),
        ("VOXEL", "Voxel", "Voxel remesh to even quads of Voxel Size; takes any mesh, closes holes"),
    ))
    voxel_size: FloatProperty(name="Voxel Size", default=0.02, min=0.0001, soft_max=1.0, precision=4, subtype="DISTANCE",
                              description="Edge length of the voxel remesh's quads, in the object's units "
                                          "(scene units when Apply Scale is on)")
    lods: IntProperty(name="LODs", default=0, min=0, max=MAX_LODS,
                      description="How many decimated copies to make, each with half the triangles of the one before, "
                                  "in a collection named after the result (hidden in the viewport). Without quads the "
                                  "backend makes them and Blender only imports them")
    origin_bottom: BoolProperty(name="Origin at Bottom Centre",
                                description="Move the object's origin to the bottom centre of its bounding box; "
                                            "the mesh stays where it is")
    apply_scale: BoolProperty(name="Apply Scale", description="Bake the object's scale into the mesh: scale 1, same size")

    def options(self) -> FinishingOptions:
        return FinishingOptions(self.face_budget, self.quads, self.voxel_size, self.lods, self.origin_bottom, self.apply_scale)

    def load(self, options: FinishingOptions) -> None:
        self.face_budget, self.quads, self.voxel_size = options.face_budget, options.quads, options.voxel_size
        self.lods, self.origin_bottom, self.apply_scale = options.lods, options.origin_bottom, options.apply_scale


@dataclass
class FinishingRun:
    """One object's finishing: its steps, how far it got, and what is needed to undo it on failure."""

    object_name: str
    options: FinishingOptions
    steps: list[str]
    done: int = 0
    original_mesh: str = ""  # a copy of the mesh as it was before the first step
    original_matrix: Matrix | None = None
    notes: list[str] = field(default_factory=list)
    lod_faces: list[int] = field(default_factory=list)
    lod_objects: list[str] = field(default_factory=list)
    lod_collection: str = ""
    backend_lods: tuple[MeshArrays, ...] = ()  # made by the backend from the imported mesh, level 1 first


class Finisher:
    """The queue of objects to finish. Main thread only; ``step`` does one operation."""

    def __init__(self):
        self.runs: collections.deque[FinishingRun] = collections.deque()
        self.last: Outcome | None = None

    @property
    def running(self) -> bool:
        return bool(self.runs)

    @property
    def fraction(self) -> float:
        run = self.runs[0] if self.runs else None
        return run.done / len(run.steps) if run else 0.0

    @property
    def message(self) -> str:
        run = self.runs[0] if self.runs else None
        return f"Finishing: {run.steps[run.done]}" if run else ""

    def start(self, obj: bpy.types.Object, options: FinishingOptions, backend_lods: tuple[MeshArrays, ...] = ()) -> None:
        """Queue the object's finishing; nothing happens before the next ``step``. A new result hides the last outcome.

        ``backend_lods``: the LODs that came with the result, imported instead of made here.
        """
        self.last = None
        if options.active:
            self.runs.append(FinishingRun(obj.name, options, options.step_names(), backend_lods=backend_lods))

    def step(self, context: bpy.types.Context) -> None:
        """Do the next operation of the first queued object; the last one pushes the undo step."""
        run = self.runs[0]
        obj = bpy.data.objects.get(run.object_name)
        if obj is None or obj.type != "MESH":
            self._end(run, Outcome("cancelled", f"Finishing {run.object_name} stopped: the object is gone "
                                                "(deleted, renamed or another file opened)"))
            return
        name = run.steps[run.done]
        if run.done == 0:
            run.original_mesh, run.original_matrix = obj.data.copy().name, obj.matrix_basis.copy()
        try:
            STEPS["LOD" if name.startswith("LOD ") else name](context, obj, run)
        except (FinishingStepError, RuntimeError, ValueError, MemoryError) as exc:  # raising would stop Blender's timer
            self._roll_back(obj, run)
            self._end(run, Outcome("error", f"Finishing {obj.name} failed at {name}, so it is left as it was: "
                                            f"{getattr(exc, 'message', exc)}", getattr(exc, "hint", "")))
            return
        run.done += 1
        if run.done == len(run.steps):
            if run.lod_faces:
                run.notes.append(faces_summary(run.lod_faces, all_triangles(obj.data)))
            self._end(run, Outcome("done", f"{obj.name} finished: {', '.join(run.notes)}"))
            if bpy.ops.ed.undo_push.poll():
                bpy.ops.ed.undo_push(message="Hunyuan3D finishing")

    def cancel(self) -> None:
        """Stop finishing: the object being finished is put back as it was before, the queued ones are left as imported."""
        if not self.runs:
            return
        run = self.runs[0]
        obj = bpy.data.objects.get(run.object_name)
        if obj is not None:
            self._roll_back(obj, run)
        while self.runs:
            self._end(self.runs[0], Outcome("cancelled", f"Finishing {run.object_name} cancelled; it is left as it was"))

    def close(self) -> None:
        """Drop the queue (the add-on is disabled); objects keep whatever steps were done."""
        while self.runs:
            self._end(self.runs[0], self.last)

    def _end(self, run: FinishingRun, outcome: Outcome | None) -> None:
        self.runs.popleft()
        self.last = outcome
        original = bpy.data.meshes.get(run.original_mesh)
        if original is not None and original.users == 0:
            bpy.data.meshes.remove(original)

    def _roll_back(self, obj: bpy.types.Object, run: FinishingRun) -> None:
        original = bpy.data.meshes.get(run.original_mesh)
        if original is not None:
            replace_mesh(obj, original)
            run.original_mesh = ""  # now the object's own mesh
        if run.original_matrix is not None:
            obj.matrix_basis = run.original_matrix
        for name in run.lod_objects:
            lod = bpy.data.objects.get(name)
            if lod is not None:
                mesh = lod.data
                bpy.data.objects.remove(lod)
                if mesh.users == 0:
                    bpy.data.meshes.remove(mesh)
        collection = bpy.data.collections.get(run.lod_collection) if run.lod_collection else None
        if collection is not None and not collection.objects:
            bpy.data.collections.remove(collection)


# -- the steps ------------------------------------------------------------------------------------


def apply_scale(context, obj, run: FinishingRun) -> None:
    scale = obj.scale.copy()
    obj.data.transform(Matrix.Diagonal((*scale, 1.0)))
    if scale.x * scale.y * scale.z < 0:  # a mirror: keep the faces pointing outwards
        obj.data.flip_normals()
    obj.scale = (1.0, 1.0, 1.0)
    run.notes.append("scale applied")


def decimate(context, obj, run: FinishingRun) -> None:
    budget, faces = run.options.face_budget, len(obj.data.polygons)
    if faces > budget:
        replace_mesh(obj, evaluated_with_modifier(context, obj, "DECIMATE", ratio=budget / faces, use_collapse_triangulate=True))
    run.notes.append(f"{len(obj.data.polygons)} faces (budget {budget})")


def quadriflow_remesh(context, obj, run: FinishingRun) -> None:
    target = run.options.face_budget or max(len(obj.data.polygons) // 2, 1)
    welded = bmesh.new()
    welded.from_mesh(obj.data)
    bmesh.ops.remove_doubles(welded, verts=welded.verts, dist=QUADRIFLOW_WELD_DISTANCE)
    welded.to_mesh(obj.data)
    welded.free()
    with context.temp_override(object=obj, active_object=obj, selected_objects=[obj], selected_editable_objects=[obj]):
        done = bpy.ops.object.quadriflow_remesh(mode="FACES", target_faces=target, preserve_attributes=True,
                                                smooth_normals=True)
    if done != {"FINISHED"}:
        raise FinishingStepError("Blender's QuadriFlow refused the mesh: it needs a manifold mesh whose face normals "
                                 "point one way", "choose Voxel, which takes any mesh, or clean the mesh up first")
    run.notes.append(f"QuadriFlow {len(obj.data.polygons)} quads")


def voxel_remesh(context, obj, run: FinishingRun) -> None:
    size = run.options.voxel_size
    areas = np.empty(len(obj.data.polygons), dtype=np.float32)
    obj.data.polygons.foreach_get("area", areas)
    expected = float(areas.sum()) / (size * size)
    if expected > VOXEL_FACE_LIMIT:
        raise FinishingStepError(f"a voxel size of {size:g} would make about {expected:,.0f} faces on this object",
                                 f"choose a voxel size of at least {(float(areas.sum()) / VOXEL_FACE_LIMIT) ** 0.5:.4g}")
    mesh = obj.data
    mesh.remesh_voxel_size, mesh.use_remesh_preserve_attributes = size, True
    with context.temp_override(object=obj, active_object=obj, selected_objects=[obj], selected_editable_objects=[obj]):
        done = bpy.ops.object.voxel_remesh()
    if done != {"FINISHED"}:
        raise FinishingStepError("Blender's voxel remesh did not run on this mesh", "try a larger voxel size")
    obj.data.shade_smooth()
    run.notes.append(f"voxel remesh {len(obj.data.polygons)} quads")


def origin_to_bottom_centre(context, obj, run: FinishingRun) -> None:
    mesh = obj.data
    positions = np.empty(3 * len(mesh.vertices), dtype=np.float32)
    mesh.attributes["position"].data.foreach_get("vector", positions)
    positions = positions.reshape(-1, 3)
    low, high = positions.min(axis=0), positions.max(axis=0)
    offset = Vector(((low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]))
    mesh.transform(Matrix.Translation(-offset))
    obj.location += obj.matrix_basis.to_3x3() @ offset
    run.notes.append("origin at bottom centre")


def make_lod(context, obj, run: FinishingRun) -> None:
    """A copy with half the triangles of the one before, decimated from it (a quad result's copies are triangulated),
    or the backend's copy of that level imported.

    Each copy is hidden only once the next one is made from it, as the viewport may leave a hidden object unevaluated.
    """
    if not run.lod_faces:
        run.lod_faces.append(triangle_count(obj.data))
        collection = bpy.data.collections.new(f"{obj.name} LODs")
        (obj.users_collection[0] if obj.users_collection else context.scene.collection).children.link(collection)
        run.lod_collection = collection.name
    level = len(run.lod_faces)
    source = bpy.data.objects[run.lod_objects[-1]] if run.lod_objects else obj
    if level <= len(run.backend_lods):
        mesh = build_mesh(run.backend_lods[level - 1], f"{obj.name}_LOD{level}")
        # The backend's copy is in the imported mesh's space; the earlier steps (scale, origin) moved the object's mesh.
        moved = obj.matrix_basis.inverted() @ run.original_matrix
        if moved != Matrix.Identity(4):
            mesh.transform(moved)
            if moved.determinant() < 0:
                mesh.flip_normals()
    else:
        mesh = evaluated_with_modifier(context, source, "DECIMATE", ratio=0.5, use_collapse_triangulate=True)
    lod = bpy.data.objects.new(f"{obj.name}_LOD{level}", mesh)
    # From the object's own transform: its matrix_world waits for a depsgraph update after the steps before.
    lod.matrix_world = (obj.parent.matrix_world @ obj.matrix_parent_inverse if obj.parent else Matrix.Identity(4)) @ obj.matrix_basis
    bpy.data.collections[run.lod_collection].objects.link(lod)
    run.lod_objects.append(lod.name)
    run.lod_faces.append(len(lod.data.polygons))
    for done in (source, lod) if level == run.options.lods else (source,):
        if done is not obj:
            hide_in_viewport(done)


def hide_in_viewport(obj) -> None:
    try:
        obj.hide_set(True)
    except RuntimeError:
        pass  # not in the view layer (the result's collection is excluded from it): already out of sight


STEPS = {"apply scale": apply_scale, "decimate": decimate, "QuadriFlow remesh": quadriflow_remesh,
         "voxel remesh": voxel_remesh, "origin": origin_to_bottom_centre, "LOD": make_lod}


def triangle_count(mesh: bpy.types.Mesh) -> int:
    """A face of n corners is n - 2 triangles, so the mesh's triangles are its corners less two per face: no
    per-face reads (``loop_total`` is read face by face, 15-25 ms for 100,000 faces)."""
    return len(mesh.loops) - 2 * len(mesh.polygons)


def all_triangles(mesh: bpy.types.Mesh) -> bool:
    return triangle_count(mesh) == len(mesh.polygons)


def evaluated_with_modifier(context, obj, kind: str, **settings) -> bpy.types.Mesh:
    """A new mesh: the object's mesh with one more modifier applied; the object is left unchanged."""
    modifier = obj.modifiers.new(MODIFIER_NAME, kind)
    try:
        for key, value in settings.items():
            setattr(modifier, key, value)
        depsgraph = context.evaluated_depsgraph_get()
        return bpy.data.meshes.new_from_object(obj.evaluated_get(depsgraph), preserve_all_data_layers=True, depsgraph=depsgraph)
    finally:
        obj.modifiers.remove(modifier)


def replace_mesh(obj, mesh) -> None:
    """Give the object another mesh under the old one's name; the old one goes when nothing else uses it."""
    old = obj.data
    obj.data = mesh
    if old.users == 0:
        name = old.name
        bpy.data.meshes.remove(old)
        mesh.name = name
