"""The add-on's single session, its environment and download tasks and the main-thread pump that drives them.

A persistent ``bpy.app.timers`` timer calls ``pump``; tests (where timers never fire) call
it directly. Each call applies a couple of milliseconds' worth of events, puts a mesh that
arrived in the scene or else does one step of finishing a result (``finishing``), refreshes
the parameter fields when a new model list arrives and redraws the sidebar when something
visible changed. After a download the backend is asked
to look at its weights again, which brings the new model list.

The sidebar's inputs live on the window manager, which File > New and File > Open replace:
they are kept before a file loads and put back after it, with the parameter fields rebuilt.
"""

from __future__ import annotations

from dataclasses import replace

import bpy

from . import arrange, importer, properties, recipe
from .downloads import DownloadTask
from .environment import EnvironmentTask
from .finishing import Finisher
from .session import HistoryEntry, Phase, Session
from .status_text import result_summary
from .tasks import Outcome

BUSY_INTERVAL_S = 0.05
IDLE_INTERVAL_S = 0.5
OBJECT_NAME = "Hunyuan3D"

session: Session | None = None
environment: EnvironmentTask | None = None
downloads: DownloadTask | None = None
finisher: Finisher | None = None
_synced_welcome: dict | None = None
_kept_inputs: dict | None = None


def start() -> None:
    global session, environment, downloads, finisher
    session = Session()
    environment = EnvironmentTask()
    downloads = DownloadTask()
    finisher = Finisher()
    bpy.app.timers.register(_tick, first_interval=IDLE_INTERVAL_S, persistent=True)
    bpy.app.handlers.render_pre.append(release_before_render)
    bpy.app.handlers.load_pre.append(_keep_inputs)
    bpy.app.handlers.load_post.append(_restore_inputs)


def stop() -> None:
    """Stop the timer and the handlers; close the session and any setup or download, without waiting for them."""
    global session, environment, downloads, finisher, _synced_welcome, _kept_inputs
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    for handlers, handler in ((bpy.app.handlers.load_pre, _keep_inputs), (bpy.app.handlers.load_post, _restore_inputs),
                              (bpy.app.handlers.render_pre, release_before_render)):
        if handler in handlers:
            handlers.remove(handler)
    if session is not None:
        session.close()
    if environment is not None:
        environment.close()
    if downloads is not None:
        downloads.close()
    if finisher is not None:
        finisher.close()
    session, environment, downloads, finisher, _synced_welcome, _kept_inputs = None, None, None, None, None, None


def pump() -> None:
    global _synced_welcome
    if session is None:
        return
    changed = session.pump()
    arrived = session.take_arrived()
    for entry in arrived:
        session.last = place_result(entry)
    if not arrived and finisher.running:  # one operation per tick: an import or a finishing step
        with _in_window():
            finisher.step(bpy.context)
        changed = True
    if environment is not None:
        changed = environment.pump() or changed
    if downloads is not None:
        finished_before = downloads.last
        changed = downloads.pump() or changed
        if downloads.last is not finished_before and downloads.last.kind == "done":
            _use_downloaded_weights()
    if session.phase is Phase.READY and session.welcome is not _synced_welcome:
        _synced_welcome = session.welcome
        for wm in bpy.data.window_managers:
            properties.sync_params(wm.hy3d)
    if session.phase is Phase.READY:
        plan_before = session.plan
        window_manager = next(iter(bpy.data.window_managers), None)
        session.want_plan(window_manager.hy3d.plan_request() if window_manager is not None else None)
        changed = changed or session.plan is not plan_before
    if changed:
        _redraw()


@bpy.app.handlers.persistent
def release_before_render(*_args) -> None:
    """Cycles and EEVEE need the GPU memory the backend holds; the preference says whether to ask for it."""
    if session is not None and bpy.context.preferences.addons[__package__].preferences.release_before_render:
        session.release_memory()
def place_result(entry: HistoryEntry) -> Outcome:
    """Put a mesh that arrived at the 3D cursor, as one undo step; the History keeps it if that fails."""
    with _in_window():
        try:
            build_result(bpy.context, entry)
        except (RuntimeError, MemoryError, ValueError) as exc:  # raising here would stop Blender's timer for good
            return Outcome("error", f"The mesh arrived but could not be imported: {exc}",
                           "it is kept in History; import it from there")
        if bpy.ops.ed.undo_push.poll():
            bpy.ops.ed.undo_push(message="Hunyuan3D result")
    return Outcome("result", result_summary(entry))


def build_result(context: bpy.types.Context, entry: HistoryEntry, at_cursor: bool = False) -> bpy.types.Object:
    """The result's object, placed as its request asks (or at the 3D cursor), carrying how it was made
    (``recipe``) into the .blend. The finishing its request asks for starts on the next ticks.

    A painted scene object (Texture Selected) instead takes the original's place and transform,
    and the original is hidden; it keeps no recipe, since Regenerate could not send its mesh again.
    """
    source = entry.request.mesh
    original = bpy.data.objects.get(source.object_name) if source is not None else None
    obj = importer.build_object(context, entry.mesh, f"{source.object_name} Textured" if source is not None else OBJECT_NAME)
    entry.picture_images = {}
    for name, png in entry.pictures.items():  # in the .blend's images: the History shows them and opens them in the Image Editor
        title = entry.picture_title(name)
        image = importer.packed_image(f"{obj.name} {title}", png)
        image.preview_ensure()  # made once here; Blender renders it off the main thread and the History only draws it
        entry.picture_images[title] = image.name
    if original is not None:
        obj.matrix_world = original.matrix_world.copy()
        original.hide_set(True)
        original.hide_render = True
    elif source is None:
        if not at_cursor:
            arrange.place(context, obj, entry.mesh, entry.request.placement)
        server = (session.welcome or {}).get("server", {}) if session is not None else {}
        obj[recipe.PROPERTY] = recipe.to_properties(entry.request, entry.result.get("seed"), server.get("version", ""))
    entry.object_name = obj.name
    if finisher is not None:
        finisher.start(obj, entry.request.finishing, entry.lods)
    return obj


def _in_window():
    """A context with a window: a timer runs without one, and the selection, the active collection and the undo
    stack belong to one."""
    return bpy.context.temp_override(window=bpy.context.window or next(iter(bpy.context.window_manager.windows), None))


def _use_downloaded_weights() -> None:
    """Have the backend look at its weights again, so the model list shows the new ones."""
    note = "the model list is updated to include them" if session.refresh_pipelines() else "the backend finds them when it starts"
    downloads.last = replace(downloads.last, hint=note)


@bpy.app.handlers.persistent
def _keep_inputs(*_args) -> None:
    global _kept_inputs
    window_manager = bpy.context.window_manager or next(iter(bpy.data.window_managers), None)
    _kept_inputs = properties.snapshot(window_manager.hy3d) if window_manager is not None else None


@bpy.app.handlers.persistent
def _restore_inputs(*_args) -> None:
    if session is not None and session.job is not None:
        session.job.file_loaded = True
    if _kept_inputs is not None:
        for wm in bpy.data.window_managers:
            properties.restore(wm.hy3d, _kept_inputs)
    _redraw()


def _tick() -> float:
    pump()
    busy = (session is not None and session.busy or environment is not None and environment.running
            or downloads is not None and downloads.running or finisher is not None and finisher.running)
    return BUSY_INTERVAL_S if busy else IDLE_INTERVAL_S


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()
