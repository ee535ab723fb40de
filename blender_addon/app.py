"""The add-on's single session, its environment and download tasks and the main-thread pump that drives them.

A persistent ``bpy.app.timers`` timer calls ``pump``; tests (where timers never fire) call
it directly. Each call applies a couple of milliseconds' worth of events, refreshes the
parameter fields when a new model list arrives and redraws the sidebar when something
visible changed. After a download the backend is asked to look at its weights again, which
brings the new model list.
"""

from __future__ import annotations

from dataclasses import replace

import bpy

from .downloads import DownloadTask
from .environment import EnvironmentTask
from .session import Phase, Session

BUSY_INTERVAL_S = 0.05
IDLE_INTERVAL_S = 0.5

session: Session | None = None
environment: EnvironmentTask | None = None
downloads: DownloadTask | None = None
_synced_welcome: dict | None = None


def start() -> None:
    global session, environment, downloads
    session = Session(import_result=_import_result)
    environment = EnvironmentTask()
    downloads = DownloadTask()
    bpy.app.timers.register(_tick, first_interval=IDLE_INTERVAL_S, persistent=True)
    bpy.app.handlers.render_pre.append(release_before_render)


def stop() -> None:
    """Stop the timer, the threads, the socket, any backend we started and any setup or download under way."""
    global session, environment, downloads, _synced_welcome
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    if release_before_render in bpy.app.handlers.render_pre:
        bpy.app.handlers.render_pre.remove(release_before_render)
    if session is not None:
        session.close()
    if environment is not None:
        environment.close()
    if downloads is not None:
        downloads.close()
    session, environment, downloads, _synced_welcome = None, None, None, None


def pump() -> None:
    global _synced_welcome
    if session is None:
        return
    changed = session.pump()
    if environment is not None:
        changed = environment.pump() or changed
    if downloads is not None:
        finished_before = downloads.last
        changed = downloads.pump() or changed
        if downloads.last is not finished_before and downloads.last.kind == "done":
            _use_downloaded_weights()
    if session.phase is Phase.READY and session.welcome is not _synced_welcome:
        _synced_welcome = session.welcome
        from .properties import sync_params

        for wm in bpy.data.window_managers:
            sync_params(wm.hy3d)
    if changed:
        _redraw()


@bpy.app.handlers.persistent
def release_before_render(*_args) -> None:
    """Cycles and EEVEE need the GPU memory the backend holds; the preference says whether to ask for it."""
    if session is not None and bpy.context.preferences.addons[__package__].preferences.release_before_render:
        session.release_memory()


def _use_downloaded_weights() -> None:
    """Have the backend look at its weights again, so the model list shows the new ones."""
    note = "the model list is updated to include them" if session.refresh_pipelines() else "the backend finds them when it starts"
    downloads.last = replace(downloads.last, hint=note)


def _tick() -> float:
    pump()
    busy = (session is not None and session.busy or environment is not None and environment.running
            or downloads is not None and downloads.running)
    return BUSY_INTERVAL_S if busy else IDLE_INTERVAL_S


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _import_result(index: int) -> str:
    """Import through the operator so the new object is one undo step."""
    window = bpy.context.window or next(iter(bpy.context.window_manager.windows), None)
    with bpy.context.temp_override(window=window):
        bpy.ops.hy3d.import_result(index=index)
    return session.history[index].object_name
