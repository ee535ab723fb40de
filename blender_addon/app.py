"""The add-on's single session, its environment task and the main-thread pump that drives both.

A persistent ``bpy.app.timers`` timer calls ``pump``; tests (where timers never fire) call
it directly. Each call applies a couple of milliseconds' worth of events, refreshes the
parameter fields when a new model list arrives and redraws the sidebar when something
visible changed.
"""

from __future__ import annotations

import bpy

from .environment import EnvironmentTask
from .session import Phase, Session

BUSY_INTERVAL_S = 0.05
IDLE_INTERVAL_S = 0.5

session: Session | None = None
environment: EnvironmentTask | None = None
_synced_welcome: dict | None = None


def start() -> None:
    global session, environment
    session = Session(import_result=_import_result)
    environment = EnvironmentTask()
    bpy.app.timers.register(_tick, first_interval=IDLE_INTERVAL_S, persistent=True)


def stop() -> None:
    """Stop the timer, the threads, the socket, any backend we started and any setup under way."""
    global session, environment, _synced_welcome
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    if session is not None:
        session.close()
    if environment is not None:
        environment.close()
    session, environment, _synced_welcome = None, None, None


def pump() -> None:
    global _synced_welcome
    if session is None:
        return
    changed = session.pump()
    if environment is not None:
        changed = environment.pump() or changed
    if session.phase is Phase.READY and session.welcome is not _synced_welcome:
        _synced_welcome = session.welcome
        from .properties import sync_params

        for wm in bpy.data.window_managers:
            sync_params(wm.hy3d)
    if changed:
        _redraw()


def _tick() -> float:
    pump()
    busy = session is not None and session.busy or environment is not None and environment.running
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
