"""The "Hunyuan3D" tab in the 3D viewport's sidebar. Panels only draw."""

from __future__ import annotations

import textwrap

import bpy

from . import app, recipe
from .backend.licences import EXCLUDED_TERRITORIES
from .downloads import missing_weights, unagreed_licences
from .session import Phase
from .status_text import plan_fits, plan_summary, progress_text

CHARACTER_WIDTH_PX = 7  # about one character of the default UI font, to wrap long labels
PICTURE_PREVIEW_SCALE = 4.0  # a History picture's preview, in icon heights
OUTCOME_ICONS = {"result": "CHECKMARK", "done": "CHECKMARK", "ready": "CHECKMARK", "removed": "TRASH", "cancelled": "CANCEL"}


class SubPanel:
    """Where every sub-panel of the main panel lives: the 3D View's sidebar, the Hunyuan3D tab."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Hunyuan3D"
    bl_parent_id = "HY3D_PT_main"


def backend_ready() -> bool:
    return app.session is not None and app.session.phase is Phase.READY


class HY3D_PT_main(bpy.types.Panel):
    bl_idname = "HY3D_PT_main"
    bl_label = "Hunyuan3D"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Hunyuan3D"

    def draw(self, context):
        layout = self.layout
        session = app.session
        if session is None:
            return
        if session.phase is not Phase.READY:
            draw_connection(layout, context, session)
            draw_download(layout, context)
            return
        if session.unresponsive:
            layout.label(text="Backend not responding...", icon="ERROR")
        inputs = context.window_manager.hy3d
        layout.prop(inputs, "pipeline")
        info = inputs.pipeline_info() or {}
        accepted = info.get("inputs", [])
        if "image" in accepted and "text" in accepted:
            layout.row().prop(inputs, "source", expand=True)
        layout.prop(inputs, "image_path" if inputs.source == "IMAGE" else "prompt")
        if inputs.source == "IMAGE":
            for view in inputs.views:
                layout.prop(view, "path", text=view.name.title())
        draw_weights(layout, context, info, text_prompt="text" in accepted and inputs.source == "TEXT")
        draw_download(layout, context)
        draw_params(layout, inputs, advanced=False)
        draw_job(layout, context, session)
        draw_outcome(layout, context, session.last)
        draw_finishing(layout, context)


class HY3D_PT_advanced(SubPanel, bpy.types.Panel):
    bl_label = "Advanced"
    bl_options = {"DEFAULT_CLOSED"}  # noqa: RUF012 (Blender wants a set)

    @classmethod
    def poll(cls, context):
        return app.session is not None and any(p.advanced for p in context.window_manager.hy3d.params)

    def draw(self, context):
        draw_params(self.layout, context.window_manager.hy3d, advanced=True)


class HY3D_PT_finishing(SubPanel, bpy.types.Panel):
    bl_label = "Finishing"
    bl_options = {"DEFAULT_CLOSED"}  # noqa: RUF012 (Blender wants a set)

    @classmethod
    def poll(cls, context):
        return backend_ready()

    def draw(self, context):
        settings = context.window_manager.hy3d.finishing
        col = self.layout.column()
        col.prop(settings, "face_budget")
        col.prop(settings, "quads")
        if settings.quads == "VOXEL":
            col.prop(settings, "voxel_size")
        col.prop(settings, "lods")
        col.prop(settings, "origin_bottom")
        col.prop(settings, "apply_scale")


class HY3D_PT_made_with(SubPanel, bpy.types.Panel):
    bl_label = "Selected Object"

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return app.session is not None and obj is not None and recipe.PROPERTY in obj

    def draw(self, context):
        draw_made_with(self.layout, context, context.active_object)


class HY3D_PT_scene_input(SubPanel, bpy.types.Panel):
    bl_label = "From the Scene"
    bl_options = {"DEFAULT_CLOSED"}  # noqa: RUF012 (Blender wants a set)

    @classmethod
    def poll(cls, context):
        return backend_ready()

    def draw(self, context):
        draw_scene_input(self.layout, context.window_manager.hy3d)


class HY3D_PT_history(SubPanel, bpy.types.Panel):
    bl_label = "History"
    bl_options = {"DEFAULT_CLOSED"}  # noqa: RUF012 (Blender wants a set)

    @classmethod
    def poll(cls, context):
        return app.session is not None and len(app.session.history) > 0

    def draw(self, context):
        for index, entry in enumerate(app.session.history):
            draw_history_entry(self.layout, index, entry)


def draw_history_entry(layout, index: int, entry) -> None:
    """A result with its import button; one with intermediate pictures folds out to show each, with its preview
    (made when the result arrived) and a button that opens it in an Image Editor."""
    if not entry.picture_images:
        header, body = layout.row(), None
    else:
        header, body = layout.panel(f"HY3D_history_{entry.ref}", default_closed=True)
    header.label(text=entry.label, icon="MESH_DATA")
    header.operator("hy3d.import_result", text="", icon="IMPORT").index = index
    if body is None:
        return
    for title, image_name in entry.picture_images.items():
        image = bpy.data.images.get(image_name)
        if image is None:
            body.label(text=f"{title}: not in this file (import the result again)", icon="ERROR")
            continue
        row = body.row()
        row.template_icon(icon_value=image.preview.icon_id if image.preview else 0, scale=PICTURE_PREVIEW_SCALE)
        column = row.column()
        column.label(text=title)
        column.operator("hy3d.show_picture", text="Show", icon="IMAGE_DATA").image = image.name


def draw_params(layout, inputs, advanced: bool) -> None:
    """The chosen model's parameter fields: the main ones, or those under Advanced."""
    col = layout.column(align=True)
    for param in inputs.params:
        if param.advanced == advanced:
            col.prop(param, param.value_field, text=param.name.replace("_", " ").title())


def draw_scene_input(layout, inputs) -> None:
    """Input pictures taken from the scene (for models that take a picture), and Into Selected."""
    if "image" in (inputs.pipeline_info() or {}).get("inputs", []):
        row = layout.row(align=True)
        row.operator("hy3d.use_camera_view", icon="CAMERA_DATA")
        row.prop(inputs, "camera_render", text="")
        row = layout.row(align=True)
        row.prop(inputs, "editor_image", text="")
        row.operator("hy3d.use_editor_image", icon="IMAGE_DATA")
    layout.prop(inputs, "into_selected")


def draw_connection(layout, context, session) -> None:
    if session.phase is Phase.STARTING:
        layout.label(text="Starting the backend...", icon="SORTTIME")
        layout.operator("hy3d.disconnect", text="Stop", icon="CANCEL")
        return
    if session.phase is Phase.FAILED:
        draw_outcome(layout, context, session.problem)
    row = layout.row()
    row.scale_y = 1.6
    row.operator("hy3d.connect", text="Restart Backend" if session.phase is Phase.FAILED else "Start Backend", icon="PLAY")
    draw_outcome(layout, context, session.last)


def draw_weights(layout, context, pipeline: dict, text_prompt: bool) -> None:
    """A box when the chosen model can't run yet: what is missing, and the download button or the backend's hint."""
    missing = missing_weights(pipeline, text_prompt)
    if missing is None or app.downloads is None or app.downloads.running:
        return
    box = layout.box()
    box.label(text="Weights missing", icon="ERROR")
    draw_wrapped(box, context, missing.summary)
    if missing.model:
        draw_licence(box, context, missing.model)
    elif missing.instead:
        draw_wrapped(box, context, f"Get them with: {missing.instead}", icon="INFO")
    box.operator("hy3d.refresh_models", icon="FILE_REFRESH")


def draw_licence(layout, context, model: str) -> None:
    """The Download Weights button; before the first download under a licence, the licence and Agree and Download."""
    unagreed = unagreed_licences(model, context.preferences.addons[__package__].preferences.accepted_licences)
    if not unagreed:
        layout.operator("hy3d.download_weights", icon="IMPORT").model = model
        return
    for licence in unagreed:
        draw_wrapped(layout, context, f"Licence: {licence.name}", icon="INFO")
        layout.operator("wm.url_open", text="Read the Licence", icon="URL").url = licence.url
    draw_wrapped(layout, context, f"It does not apply in {EXCLUDED_TERRITORIES}: the weights may not be used there. "
                 "Agree and Download records your agreement; it is asked once.", icon="ERROR")
    button = layout.operator("hy3d.download_weights", text="Agree and Download", icon="CHECKMARK")
    button.model, button.agree = model, True


def draw_download(layout, context) -> None:
    task = app.downloads
    if task is None:
        return
    if task.running:
        box = layout.box()
        box.label(text=f"Downloading {task.model}", icon="IMPORT")
        box.progress(factor=task.fraction, type="BAR", text=task.message)
        box.operator("hy3d.cancel_download", icon="CANCEL")
        return
    draw_outcome(layout, context, task.last)


def draw_wrapped(layout, context, text: str, icon: str = "NONE") -> None:
    """A long message as several labels that fit the sidebar's width; the icon on the first."""
    width = context.region.width if context.region else 300
    scale = context.preferences.system.ui_scale or 1.0  # 0 in background mode
    characters = max(20, int(width / (CHARACTER_WIDTH_PX * scale)))
    column = layout.column(align=True)
    for number, line in enumerate(textwrap.wrap(text, characters) or [""]):
        column.label(text=line, icon=icon if number == 0 else "BLANK1" if icon != "NONE" else "NONE")


def draw_job(layout, context, session) -> None:
    """Generate (greyed out, with the reason, while the inputs can't run), or the running job with Cancel."""
    job = session.job
    if job is None:
        row = layout.row()
        row.scale_y = 1.8
        row.operator("hy3d.generate", icon="MESH_MONKEY")
        problem = context.window_manager.hy3d.problem()
        if problem:
            draw_wrapped(layout, context, problem, icon="ERROR")
        draw_plan(layout, context, session)
        draw_previews(layout, context)
        layout.operator("hy3d.texture_selected", icon="TEXTURE")
        layout.operator("hy3d.free_gpu_memory", icon="MEMORY")
        return
    layout.progress(factor=job.fraction(), type="BAR", text=progress_text(job))
    layout.operator("hy3d.cancel", icon="CANCEL")
    draw_previews(layout, context)
    for index, request in enumerate(session.pending):
        row = layout.row()
        row.label(text=f"Queued: {request.label()}", icon="SORTTIME")
        row.operator("hy3d.drop_queued", text="", icon="X").index = index


def draw_previews(layout, context) -> None:
    """Preview Variations with its count (the same N as Variations)."""
    row = layout.row(align=True)
    row.prop(context.window_manager.hy3d, "variations", text="")
    row.operator("hy3d.preview_variations", icon="IMGDISPLAY")


def draw_plan(layout, context, session) -> None:
    """What the job would take (memory mode, peak memory beside what is free, time), as the backend planned it."""
    if session.plan is not None:
        draw_wrapped(layout, context, plan_summary(session.plan), icon="INFO" if plan_fits(session.plan) else "ERROR")
    elif session.plan_error:
        draw_wrapped(layout, context, f"No plan: {session.plan_error}", icon="INFO")


def draw_made_with(layout, context, obj) -> None:
    """How the active object was made, and what can be done with those settings."""
    stored = obj[recipe.PROPERTY]
    model, seed, quality = ((stored.get("model", "?"), stored.get("seed"), stored.get("quality", "full"))
                            if hasattr(stored, "get") else ("damaged settings", None, "full"))
    made = f"{obj.name}: {model}{f', seed {seed}' if seed is not None else ''}{f' ({quality})' if quality != 'full' else ''}"
    draw_wrapped(layout, context, made, icon="INFO")
    if quality == "preview":
        layout.operator("hy3d.refine", icon="SHADERFX")
    row = layout.row(align=True)
    row.operator("hy3d.regenerate", icon="FILE_REFRESH")
    row.operator("hy3d.load_settings", icon="IMPORT")
    row = layout.row(align=True)
    row.prop(context.window_manager.hy3d, "variations", text="")
    row.operator("hy3d.variations", icon="DUPLICATE")


def draw_finishing(layout, context) -> None:
    """The finishing step running now ("Finishing: LOD 2 of 3"), or how the last finishing ended."""
    finisher = app.finisher
    if finisher is None:
        return
    if finisher.running:
        row = layout.row()
        row.progress(factor=finisher.fraction, type="BAR", text=finisher.message)
        row.operator("hy3d.cancel_finishing", text="", icon="CANCEL")
    else:
        draw_outcome(layout, context, finisher.last)


def draw_outcome(layout, context, outcome) -> None:
    """A job's or the connection's outcome: message, hint, and any quoted lines (the end of a log)."""
    if outcome is None:
        return
    icon = OUTCOME_ICONS.get(outcome.kind, "ERROR")
    box = layout.box()
    draw_wrapped(box, context, outcome.message, icon=icon)
    if outcome.hint:
        draw_wrapped(box, context, outcome.hint, icon="INFO")
    for line in outcome.details:
        draw_wrapped(box, context, line, icon="RIGHTARROW_THIN")


classes = (HY3D_PT_main, HY3D_PT_made_with, HY3D_PT_scene_input, HY3D_PT_advanced, HY3D_PT_finishing, HY3D_PT_history)
