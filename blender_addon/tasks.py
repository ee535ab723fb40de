"""Work that runs off Blender's main thread and reports back through a queue. No bpy.

A ``BackgroundTask`` runs one worker thread at a time. The worker only puts events on
``events``; ``pump``, on the main thread, applies them to the state the interface draws
(``running``, ``fraction``, ``message``) and, at the ``Finished`` event, keeps its ``Outcome``
as ``last``. The session's job results are ``Outcome``s too.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Outcome:
    kind: str  # "result", "done", "ready", "removed", "cancelled" or "error"
    message: str
    hint: str = ""
    details: tuple[str, ...] = ()  # lines to quote, such as the end of a log


@dataclass(frozen=True)
class Finished:
    outcome: Outcome


class BackgroundTask:
    """One piece of work at a time. Main thread only, except the worker it starts."""

    thread_name = "hy3d-task"

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.last: Outcome | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def fraction(self) -> float:
        return 0.0

    @property
    def message(self) -> str:
        return "Cancelling..." if self._cancel.is_set() else self._status() or "Starting..."

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        """Cancel anything running (add-on disabled, Blender quitting); the task is not used afterwards.

        Returns at once: a reaper thread waits for the worker and forces its work to end if it
        ignores the cancel, so Blender's main thread never waits.
        """
        self.cancel()
        if self._thread is not None:
            threading.Thread(target=self._reap, args=(self._thread,), name=f"{self.thread_name}-reaper", daemon=True).start()

    def _reap(self, worker: threading.Thread) -> None:
        worker.join(JOIN_TIMEOUT_S)
        if worker.is_alive():
            self._stop_hard()
            worker.join(JOIN_TIMEOUT_S)

    def pump(self) -> bool:
        """Apply the worker's events; returns whether anything visible changed."""
        changed = False
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            if isinstance(event, Finished):
                self.last = event.outcome
                if self._thread is not None:
                    self._thread.join(JOIN_TIMEOUT_S)
                self._thread = None
                self._ended()
            else:
                self._apply(event)

    def _run_in_background(self, target, *args) -> None:
        self.last = None
        self._cancel.clear()
        self._thread = threading.Thread(target=target, args=args, name=self.thread_name, daemon=True)
        self._thread.start()

    # -- what each kind of task fills in --

    def _status(self) -> str:
        """The current step in words ("" before the first event)."""
        return ""

    def _apply(self, event) -> None:
        """Take one progress event from the worker (main thread)."""

    def _ended(self) -> None:
        """Drop what belonged to the finished or closed work (main thread)."""

    def _stop_hard(self) -> None:
        """The worker ignored cancel for JOIN_TIMEOUT_S: force its work to end."""
