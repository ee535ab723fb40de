"""Starting and stopping the bundled backend as a child process. No bpy.

``launch`` blocks until the backend prints its ready line, so it runs on the connection
thread, never on Blender's main thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AddonError

SHUTDOWN_WAIT_S = 150.0  # a backend asked to shut down first ends its job at the next step (it waits up to 120 s for that)
STOP_GRACE_S = 5.0
LOG_GENERATIONS = 3  # backend.log, backend.1.log, backend.2.log


class LaunchError(AddonError):
    """The backend could not be started."""


@dataclass(frozen=True)
class LaunchSettings:
    """How to start ``python -m backend serve``.

    Args:
        python: the interpreter of an environment that has torch and the backend's requirements.
        package_dir: the folder holding the ``backend`` package (the add-on's own folder).
        log_path: the backend's stderr goes here.
        options: backend options (device, memory, weights, output folder) as command-line words.
        extra_args: more words for ``serve``, for example ``--pipelines-from MODULE``.
        extra_pythonpath: folders added to PYTHONPATH after ``package_dir`` (plug-in pipelines).
    """

    python: str
    package_dir: str
    log_path: str
    options: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    extra_pythonpath: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [self.python, "-m", "backend", "serve", "--port", "0", "--parent-pid", str(os.getpid()),
                *self.options, *self.extra_args]

    def environment(self) -> dict[str, str]:
        return backend_environment(self.package_dir, self.extra_pythonpath)


def backend_environment(package_dir: str, extra_pythonpath: tuple[str, ...] = ()) -> dict[str, str]:
    """Blender's environment without its Python settings, the bundled backend first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join((package_dir, *extra_pythonpath))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Ready:
    host: str
    port: int
    pid: int
    token: str


@dataclass
class BackendProcess:
    """A backend this Blender session started; ``stop`` ends it for sure."""

    process: subprocess.Popen
    log_path: str
    _stopped: threading.Event = field(default_factory=threading.Event)

    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, asked_to_shut_down: bool) -> None:
        """Wait for the exit of a backend asked to shut down, else terminate it (it cleans up), then kill.

        Blocks for as long as the backend takes: call it from a background thread, never Blender's main one.
        """
        self._stopped.set()
        waits = ((None, SHUTDOWN_WAIT_S) if asked_to_shut_down else (None, 0.0),
                 (self.process.terminate, STOP_GRACE_S), (self.process.kill, STOP_GRACE_S))
        for end, seconds in waits:
            if end is not None:
                end()
            try:
                self.process.wait(seconds)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()


def start(settings: LaunchSettings) -> BackendProcess:
    """Start the process; raises LaunchError when the interpreter can't be run at all."""
    check_python(settings.python)
    Path(settings.log_path).parent.mkdir(parents=True, exist_ok=True)
    try:
        rotate_logs(settings.log_path)
    except OSError as exc:
        raise LaunchError(f"Can't keep the backend's earlier logs next to {settings.log_path}: {exc.strerror or exc}",
                          hint="check that the add-on's user folder is writable") from None
    try:
        with open(settings.log_path, "wb") as log:
            process = subprocess.Popen(
                settings.command(), cwd=settings.package_dir, env=settings.environment(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0,
            )
    except OSError as exc:
        raise LaunchError(f"Could not run {settings.python}: {exc.strerror or exc}",
                          hint="choose a python executable you can run in the add-on preferences") from None
    return BackendProcess(process, settings.log_path)


def check_python(python: str) -> None:
    """Raise LaunchError with the fix when there is no backend interpreter to run."""
    if not python:
        raise LaunchError("The backend has no Python environment yet",
                          hint="Preferences > Add-ons > Hunyuan3D: press Set Up Backend, or choose the python of an "
                               "environment with torch installed")
    if shutil.which(python) is None:
        raise LaunchError(f"Python interpreter not found: {python}",
                          hint="choose an existing python executable in the add-on preferences")


def wait_ready(backend: BackendProcess, python: str) -> Ready:
    """Read the ready line; if the process ends first, explain why from its log."""
    line = backend.process.stdout.readline()
    if not line:
        backend.process.wait()
        if backend.stopped:
            raise LaunchError("Backend start was cancelled")
        raise explain_early_exit(python, backend.process.returncode, read_tail(backend.log_path))
    try:
        ready = json.loads(line)
        token = Path(ready["token_file"]).read_text(encoding="utf-8").strip()
        result = Ready(ready["host"], int(ready["port"]), int(ready["pid"]), token)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise LaunchError(f"The backend's ready line could not be used ({exc})",
                          hint="the add-on and its bundled backend come from the same zip; reinstall it") from None
    threading.Thread(target=_drain, args=(backend.process.stdout,), name="hy3d-backend-stdout", daemon=True).start()
    return result


def _drain(stream) -> None:
    # Anything a library prints on stdout after the ready line must not fill the pipe and stall the backend.
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError):
        pass


def explain_early_exit(python: str, code: int, log_tail: str) -> LaunchError:
    missing = re.findall(r"No module named '([\w.]+)'", log_tail)
    if missing:
        module = missing[-1].split(".")[0]
        if module == "backend":
            return LaunchError("The bundled backend package is missing from the add-on folder",
                               hint="reinstall the add-on from the zip built by build.py")
        return LaunchError(f"{python} can't run the backend: it has no '{module}' module",
                           hint=f"install the backend's requirements into it ({python} -m pip install torch numpy ...), "
                                "or choose the python of an environment that has them")
    last = log_tail.strip().splitlines()[-1] if log_tail.strip() else "no output"
    return LaunchError(f"The backend exited with code {code} before it was ready: {last}",
                       hint="see the backend log for details")


def rotate_logs(path: str, generations: int = LOG_GENERATIONS) -> None:
    """Keep the last logs: backend.log becomes backend.1.log, backend.1.log backend.2.log, and so on."""
    stem, suffix = os.path.splitext(path)
    names = [path] + [f"{stem}.{number}{suffix}" for number in range(1, generations)]
    for newer, older in reversed(list(zip(names, names[1:]))):
        if os.path.exists(newer):
            os.replace(newer, older)


def last_lines(path: str, count: int = 3) -> list[str]:
    """The last non-empty lines of a log, to quote when the process behind it died."""
    return [line.strip() for line in read_tail(path).splitlines() if line.strip()][-count:]


def read_tail(path: str, limit: int = 8192) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
