"""Setting up and removing the backend's own environment without freezing Blender. No bpy.

The work (``backend.envsetup``: venv, pip, doctor) runs on a ``tasks.BackgroundTask`` worker;
its progress events become the preferences' progress bar and message, and at the end the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backend import envsetup
from .tasks import BackgroundTask, Finished, Outcome


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


class EnvironmentTask(BackgroundTask):
    """One setup or removal at a time; its outcome is "ready", "removed", "cancelled" or "error"."""

    thread_name = "hy3d-environment"

    def __init__(self):
        super().__init__()
        self.progress: envsetup.Progress | None = None
        self._setup: envsetup.Setup | None = None

    @property
    def fraction(self) -> float:
        return self.progress.fraction if self.progress is not None else 0.0

    def start(self, request: SetupRequest) -> None:
        if not self.running:
            self._run_in_background(self._set_up, request)

    def remove(self, env_dir: str, first: Callable[[], object] = lambda: None) -> None:
        """Delete the environment on the worker, after ``first`` (waiting for a backend that runs from it to exit)."""
        if not self.running:
            self._run_in_background(self._remove, env_dir, first)

    def cancel(self) -> None:
        super().cancel()
        setup = self._setup
        if setup is not None:
            setup.cancel()

    def _status(self) -> str:
        return self.progress.message if self.progress is not None else ""

    def _apply(self, event: envsetup.Progress) -> None:
        self.progress = event

    def _ended(self) -> None:
        self.progress, self._setup = None, None

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
        self.events.put(Finished(outcome))

    def _remove(self, env_dir: str, first: Callable[[], object]) -> None:
        first()
        try:
            envsetup.remove_environment(Path(env_dir))
            outcome = Outcome("removed", f"Removed {env_dir}")
        except envsetup.SetupError as exc:
            outcome = Outcome("error", exc.message, exc.hint)
        self.events.put(Finished(outcome))
