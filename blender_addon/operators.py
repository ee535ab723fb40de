"""Operators: each gathers its inputs, makes one call into the session or the importer, and reports."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from . import app, properties, recipe, scene_mesh, viewport_input
from .errors import AddonError
from .placement import Placement
from .preferences import connection_settings, download_request, environment_dir, setup_request
from .session import Phase


class StartsWork:
    """Mixin for an operator that starts work (a job, a setup, a download) held by ``work()``.

    Available while that work is not running; ``start`` raises AddonError to refuse, and the
    error becomes the operator's report.
    """

    @classmethod
    def poll(cls, context):
        work = cls.work()
        return work is not None and not work.running

    def execute(self, context):
        try:
            self.start(context)
        except AddonError as exc:
            self.report({"ERROR"}, exc.report_text())
            return {"CANCELLED"}
        return {"FINISHED"}


class CancelsWork:
    """Mixin for the Cancel button of the work ``work()`` holds: available while it runs."""

    @classmethod
    def poll(cls, context):
        work = cls.work()
        return work is not None and work.running

    def execute(self, context):
        self.work().cancel()
        return {"FINISHED"}


class AsksTheBackend:
    """Operators that send the connected backend a request: available only while it is ready."""

    @classmethod
    def poll(cls, context):
        return app.session is not None and app.session.phase is Phase.READY


class HY3D_OT_connect(bpy.types.Operator):
    """Start the bundled backend, or connect to the running one, as set in the preferences (restarts if connected)"""

    bl_idname = "hy3d.connect"
    bl_label = "Start Backend"

    def execute(self, context):
        app.session.connect(connection_settings(context))
        return {"FINISHED"}


class HY3D_OT_disconnect(bpy.types.Operator):
    """Disconnect, and stop the backend if the add-on started it"""

    bl_idname = "hy3d.disconnect"
    bl_label = "Stop Backend"

    def execute(self, context):
        app.session.close()
        return {"FINISHED"}


class HY3D_OT_test_connection(bpy.types.Operator):
    """Connect with the current preferences and show the server version, device, precision and free memory"""

    bl_idname = "hy3d.test_connection"
    bl_label = "Test Connection"

    def execute(self, context):
        if app.session.phase is Phase.READY:
            app.session.request_status()
        else:
            app.session.connect(connection_settings(context))
        return {"FINISHED"}


class HY3D_OT_refresh_models(AsksTheBackend, bpy.types.Operator):
    """Have the backend look for weights again (after you added some to the weights folder) and update the model list"""

    bl_idname = "hy3d.refresh_models"
    bl_label = "Check Again"

    def execute(self, context):
        app.session.refresh_pipelines()
        return {"FINISHED"}


class HY3D_OT_free_gpu_memory(AsksTheBackend, bpy.types.Operator):
    """Have the backend give its GPU memory back to Blender now; its next job copies the weights over again"""

    bl_idname = "hy3d.free_gpu_memory"
    bl_label = "Free GPU Memory"

    def execute(self, context):
        app.session.release_memory()
        return {"FINISHED"}


def can_submit(operator: type, problem: Callable[[], str]) -> bool:
    """Whether a job can be sent now: the backend ready and idle, and ``problem()`` empty (else it is the greyed button's tooltip)."""
    if app.session is None or app.session.phase is not Phase.READY or app.session.running:
        return False
    reason = problem()
    if reason:
        operator.poll_message_set(reason)
    return not reason


class HY3D_OT_generate(StartsWork, bpy.types.Operator):
    """Generate a mesh from the image or the prompt; it appears at the 3D cursor (or in the active box with Into Selected)"""

    bl_idname = "hy3d.generate"
    bl_label = "Generate"

    @staticmethod
    def work():
        return app.session

    @classmethod
    def poll(cls, context):
        return can_submit(cls, lambda: context.window_manager.hy3d.problem())

    def start(self, context):
        inputs = context.window_manager.hy3d
        app.session.submit(replace(inputs.request(), placement=viewport_input.placement_for(context, inputs)))


class HY3D_OT_texture_selected(StartsWork, bpy.types.Operator):
    """Paint a texture on the selected mesh from the image or the prompt; the textured copy takes its place and the original is hidden"""

    bl_idname = "hy3d.texture_selected"
    bl_label = "Texture Selected"

    @staticmethod
    def work():
        return app.session

    @classmethod
    def poll(cls, context):
        return can_submit(cls, lambda: scene_mesh.selection_problem(context) or context.window_manager.hy3d.texture_problem())

    def start(self, context):
        app.session.submit(context.window_manager.hy3d.texture_request(scene_mesh.selected_mesh(context)))


class HY3D_OT_cancel(CancelsWork, bpy.types.Operator):
    """Stop the running job (the backend stops at its next step)"""

    bl_idname = "hy3d.cancel"
    bl_label = "Cancel"

    @staticmethod
    def work():
        return app.session


class HY3D_OT_cancel_finishing(CancelsWork, bpy.types.Operator):
    """Stop finishing: the object being finished is put back as it was, results waiting to be finished are left as imported"""

    bl_idname = "hy3d.cancel_finishing"
    bl_label = "Cancel"

    @staticmethod
    def work():
        return app.finisher


class HY3D_OT_drop_queued(bpy.types.Operator):
    """Take this job off the queue before it starts"""

    bl_idname = "hy3d.drop_queued"
    bl_label = "Remove from Queue"

    index: IntProperty(default=0, min=0, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return app.session is not None and len(app.session.pending) > 0

    def execute(self, context):
        app.session.drop_pending(self.index)
        return {"FINISHED"}


class UsesActiveRecipe:
    """Mixin for an operator that works from how the active object was made (its ``recipe`` property).

    ``start`` raises AddonError to refuse; the error becomes the operator's report.
    """

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return app.session is not None and obj is not None and recipe.PROPERTY in obj

    def execute(self, context):
        try:
            self.start(context, recipe.from_properties(context.active_object[recipe.PROPERTY]))
        except AddonError as exc:
            self.report({"ERROR"}, exc.report_text())
            return {"CANCELLED"}
        return {"FINISHED"}


class HY3D_OT_regenerate(UsesActiveRecipe, bpy.types.Operator):
    """Generate the active object again with the settings and seed it was made with (queued after a running job)"""

    bl_idname = "hy3d.regenerate"
    bl_label = "Regenerate"

    def start(self, context, request):
        app.session.submit_all([request])


class HY3D_OT_variations(UsesActiveRecipe, bpy.types.Operator):
    """Generate the active object's settings with new seeds: one queued job per seed, each can be cancelled"""

    bl_idname = "hy3d.variations"
    bl_label = "Variations"

    def start(self, context, request):
        app.session.submit_all(recipe.with_new_seeds(request, context.window_manager.hy3d.variations))


class HY3D_OT_preview_variations(StartsWork, bpy.types.Operator):
    """Quick previews of the panel's inputs with N new seeds (the model's preview settings: fewer steps, a coarser grid), side by side in a new collection; one queued job each"""

    bl_idname = "hy3d.preview_variations"
    bl_label = "Preview Variations"

    @staticmethod
    def work():
        return app.session

    @classmethod
    def poll(cls, context):
        if app.session is None or app.session.phase is not Phase.READY:
            return False
        problem = context.window_manager.hy3d.problem(previews=True)
        if problem:
            cls.poll_message_set(problem)
        return not problem

    def start(self, context):
        inputs = context.window_manager.hy3d
        row = viewport_input.placement_for(context, inputs, "row", batch=uuid.uuid4().hex,
                                           start=tuple(context.scene.cursor.location))
        seeds = recipe.with_new_seeds(inputs.request(), inputs.variations)
        app.session.submit_all([replace(recipe.as_preview(request, inputs.pipeline_info()), placement=row) for request in seeds])


class HY3D_OT_refine(UsesActiveRecipe, bpy.types.Operator):
    """Make the active preview again at full quality with the same seed and inputs; the result goes in front of it"""

    bl_idname = "hy3d.refine"
    bl_label = "Refine"

    @classmethod
    def poll(cls, context):
        if not super().poll(context):
            return False
        stored = context.active_object[recipe.PROPERTY]
        return hasattr(stored, "get") and stored.get("quality") == "preview"

    def start(self, context, request):
        app.session.submit_all([replace(recipe.refined(request), placement=Placement("beside", target=context.active_object.name))])


class HY3D_OT_load_settings(UsesActiveRecipe, bpy.types.Operator):
    """Put the model, input and parameters the active object was made with into the panel"""

    bl_idname = "hy3d.load_settings"
    bl_label = "Load Settings"

    def start(self, context, request):
        if not any(p["name"] == request.pipeline for p in app.session.pipelines()):
            raise AddonError(f"The model {request.pipeline} is not in the backend's list",
                             "start the backend that has it (or add its weights) and try again")
        properties.load_request(context.window_manager.hy3d, request)


class TakesAPicture:
    """Mixin for an operator that makes the input picture from the scene (``picture`` returns its path) and puts it in the panel."""

    def execute(self, context):
        inputs = context.window_manager.hy3d
        try:
            path = self.picture(context, inputs)
        except AddonError as exc:
            self.report({"ERROR"}, exc.report_text())
            return {"CANCELLED"}
        inputs.source, inputs.image_path = "IMAGE", path
        self.report({"INFO"}, f"Input picture: {path}")
        return {"FINISHED"}


class HY3D_OT_use_camera_view(TakesAPicture, bpy.types.Operator):
    """Render the scene's active camera at the render resolution on a transparent background and use it as the input picture; results made from it face that camera"""

    bl_idname = "hy3d.use_camera_view"
    bl_label = "Use Camera View"

    def picture(self, context, inputs):
        path, view = viewport_input.render_camera_view(context, "BLENDER_WORKBENCH" if inputs.camera_render == "WORKBENCH" else "")
        inputs.camera_picture, inputs.camera_view = path, view
        return path


class HY3D_OT_use_editor_image(TakesAPicture, bpy.types.Operator):
    """Use the chosen image, or the one an open Image Editor shows, as the input picture"""

    bl_idname = "hy3d.use_editor_image"
    bl_label = "Use Image"

    def picture(self, context, inputs):
        return viewport_input.editor_image_file(context, inputs.editor_image)


class HY3D_OT_import_result(bpy.types.Operator):
    """Put this result in the scene again, at the 3D cursor (new results are placed there on arrival)"""

    bl_idname = "hy3d.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 (Blender wants a set)

    index: IntProperty(default=0, min=0, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return app.session is not None and len(app.session.history) > 0

    def execute(self, context):
        if self.index >= len(app.session.history):
            self.report({"ERROR"}, "That result is no longer in the history")
            return {"CANCELLED"}
        app.build_result(context, app.session.history[self.index], at_cursor=True)
        return {"FINISHED"}


class HY3D_OT_show_picture(bpy.types.Operator):
    """Show this picture in an Image Editor: the one open, or a new window with one"""

    bl_idname = "hy3d.show_picture"
    bl_label = "Show Picture"

    image: StringProperty(options={"SKIP_SAVE"})

    def execute(self, context):
        image = bpy.data.images.get(self.image)
        if image is None:
            self.report({"ERROR"}, f"The picture {self.image!r} is no longer in this file: import the result again from History "
                        "to bring its pictures back")
            return {"CANCELLED"}
        space = viewport_input.image_editor_space(context)
        if space is None:
            self.report({"ERROR"}, "No Image Editor is open and no new window can be opened here: change an area to an "
                        "Image Editor and press the button again")
            return {"CANCELLED"}
        space.image = image
        return {"FINISHED"}


class HY3D_OT_setup_backend(StartsWork, bpy.types.Operator):
    """Make the backend's own Python environment with the torch build for this machine (resumes or repairs one)"""

    bl_idname = "hy3d.setup_backend"
    bl_label = "Set Up Backend"

    @staticmethod
    def work():
        return app.environment

    def start(self, context):
        app.environment.start(setup_request(context))


class HY3D_OT_cancel_setup(CancelsWork, bpy.types.Operator):
    """Stop the setup; Set Up Backend resumes it later"""

    bl_idname = "hy3d.cancel_setup"
    bl_label = "Cancel Setup"

    @staticmethod
    def work():
        return app.environment


class HY3D_OT_remove_backend_env(StartsWork, bpy.types.Operator):
    """Delete the environment Set Up Backend made (stops the backend first)"""

    bl_idname = "hy3d.remove_backend_env"
    bl_label = "Remove"

    @staticmethod
    def work():
        return app.environment

    def start(self, context):
        prefs = context.preferences.addons[__package__].preferences
        closing = []
        if not prefs.python_path:  # a backend running from this environment would hold files open
            app.session.close()
            closing = app.session.closing()
        app.environment.remove(environment_dir(prefs), first=lambda: [c.wait_closed() for c in closing])


class HY3D_OT_download_weights(StartsWork, bpy.types.Operator):
    """Download this model's weights from Hugging Face with the backend's Python (needs Allow Online Access)"""

    bl_idname = "hy3d.download_weights"
    bl_label = "Download Weights"

    model: StringProperty(name="Model", description="What 'python -m backend download' fetches", options={"SKIP_SAVE"})
    agree: BoolProperty(name="Agree", description="You read the weights' licence and agree to it (remembered)",
                        options={"SKIP_SAVE"})

    @staticmethod
    def work():
        return app.downloads

    def start(self, context):
        app.downloads.start(download_request(context, self.model, self.agree))


class HY3D_OT_cancel_download(CancelsWork, bpy.types.Operator):
    """Stop the download; Download Weights goes on from the files already fetched"""

    bl_idname = "hy3d.cancel_download"
    bl_label = "Cancel Download"

    @staticmethod
    def work():
        return app.downloads


classes = (HY3D_OT_connect, HY3D_OT_disconnect, HY3D_OT_test_connection, HY3D_OT_refresh_models, HY3D_OT_free_gpu_memory, HY3D_OT_generate,
           HY3D_OT_texture_selected, HY3D_OT_cancel, HY3D_OT_cancel_finishing, HY3D_OT_drop_queued, HY3D_OT_regenerate, HY3D_OT_variations,
           HY3D_OT_preview_variations, HY3D_OT_refine, HY3D_OT_load_settings, HY3D_OT_use_camera_view, HY3D_OT_use_editor_image,
           HY3D_OT_import_result, HY3D_OT_show_picture, HY3D_OT_setup_backend, HY3D_OT_cancel_setup, HY3D_OT_remove_backend_env,
           HY3D_OT_download_weights, HY3D_OT_cancel_download)
