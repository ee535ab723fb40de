"""Setting up and removing the backend's own environment without freezing Blender. No bpy.

The work (``backend.envsetup``: venv, pip, doctor) runs on a thread that only puts events on
a queue; ``EnvironmentTask.pump`` on the main thread applies them to the state the
preferences draw: a progress bar, the current message, and at the end the outcome.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from .backend import envsetup

JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SetupRequest:
    """Plain data from the preferences; nothing bpy crosses into the thread.

    Args:
        env_dir: the environment's folder.
        torch: "auto", "cpu", "cuda", "rocm" or "mps".
        wheels_dir: install only from this folder ("" for none: download).
        allow_online: Blender's "Allow Online Access"; when off, nothing is downloaded.
        backend_root: the add-on's folder, which holds the bundled ``backend`` package.
    """

    env_dir: str
    torch: str
    wheels_dir: str
    allow_online: bool
    backend_root: str


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ready", "cancelled", "removed" or "error"
    message: str
    hint: str = ""


@dataclass(frozen=True)
class _Finished:
    outcome: Outcome


class EnvironmentTask:
    """One setup or removal at a time. Main thread only, except the worker it starts."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.progress: envsetup.Progress | None = None
        self.last: Outcome | None = None
        self._setup: envsetup.Setup | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def fraction(self) -> float:
        return self.progress.fraction if self.progress is not None else 0.0

    @property
    def message(self) -> str:
        if self._cancel.is_set():
            return "Cancelling..."
        return self.progress.message if self.progress is not None else "Starting..."

    def start(self, request: SetupRequest) -> None:
        self._begin(self._set_up, request)

    def remove(self, env_dir: str) -> None:
        self._begin(self._remove, env_dir)

    def cancel(self) -> None:
        self._cancel.set()
        setup = self._setup
        if setup is not None:
            setup.cancel()

    def close(self) -> None:
        """Cancel anything running and wait for the worker (add-on disabled, Blender quitting)."""
        self.cancel()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None

    def pump(self) -> bool:
        """Apply the worker's events; returns whether anything visible changed."""
        changed = False
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            if isinstance(event, _Finished):
                self.last = event.outcome
                self.progress = None
                self._setup = None
                if self._thread is not None:
                    self._thread.join(JOIN_TIMEOUT_S)
                self._thread = None
            else:
                self.progress = event

    def _begin(self, target, argument) -> None:
        if self.running:
            return
        self.last, self.progress = None, None
        self._cancel.clear()
        self._thread = threading.Thread(target=target, args=(argument,), name="hy3d-environment", daemon=True)
        self._thread.start()

    # -- worker thread --

    def _set_up(self, request: SetupRequest) -> None:
        try:
            plan = envsetup.make_plan(Path(request.env_dir), request.torch,
                                      wheels_dir=Path(request.wheels_dir) if request.wheels_dir else None,
                                      backend_root=Path(request.backend_root))
            self._setup = envsetup.Setup(plan, on_progress=self.events.put, allow_online=request.allow_online)
            if self._cancel.is_set():
                raise envsetup.SetupCancelled()
            report = self._setup.run()
            outcome = Outcome("ready", "Backend environment ready: " + "; ".join(report.summary()))
        except envsetup.SetupCancelled:
            outcome = Outcome("cancelled", "Setup cancelled", "press Set Up Backend again to resume where it stopped")
        except envsetup.SetupError as exc:
            outcome = Outcome("error", exc.message, exc.hint)
        except OSError as exc:
            outcome = Outcome("error", f"Setup failed: {exc}", "see the setup log in the environment folder")
        self.events.put(_Finished(outcome))

    def _remove(self, env_dir: str) -> None:
        try:
            envsetup.remove_environment(Path(env_dir))
            outcome = Outcome("removed", f"Removed {env_dir}")
        except envsetup.SetupError as exc:
            outcome = Outcome("error", exc.message, exc.hint)
        self.events.put(_Finished(outcome))
