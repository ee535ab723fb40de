"""Carrying out a plan resumably, reporting progress; the finished environment's report; removal. Stdlib only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SetupCancelled, SetupError
from .machine import command_output, no_window
from .pip_output import parse_pip_line
from .plan import REPORT_NAME, STATE_DIR, STATE_NAME, Plan, Step

PTH_NAME = "hunyuan3d_backend.pth"


@dataclass(frozen=True)
class Progress:
    step: str
    index: int  # 1-based
    total: int
    message: str
    fraction: float  # of the whole setup, 0..1


@dataclass
class Report:
    """What setup learned about the finished environment; saved next to the state so the add-on can show it."""

    python: str
    python_version: str
    torch_version: str
    devices: list[dict] = field(default_factory=list)

    @property
    def device_line(self) -> str:
        selected = next((d for d in self.devices if d.get("selected")), self.devices[0] if self.devices else None)
        if selected is None:
            return "no device found"
        return f"{selected.get('device')} ({selected.get('name')}), computes in {selected.get('compute_dtype')}"

    def summary(self) -> list[str]:
        return [f"Python {self.python_version}: {self.python}", f"torch {self.torch_version}", f"device: {self.device_line}"]

    def to_json(self) -> dict:
        return {"python": self.python, "python_version": self.python_version, "torch_version": self.torch_version,
                "devices": self.devices}

    @classmethod
    def from_json(cls, data: dict) -> Report:
        return cls(data["python"], data["python_version"], data["torch_version"], list(data.get("devices", [])))


def read_report(env_dir: Path) -> Report | None:
    """The report of a finished setup in ``env_dir``, or None when it isn't set up (or was changed since)."""
    env_dir = Path(env_dir)
    try:
        state = json.loads((env_dir / STATE_DIR / STATE_NAME).read_text(encoding="utf-8"))
        report = Report.from_json(json.loads((env_dir / STATE_DIR / REPORT_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return report if state.get("complete") and Path(report.python).is_file() else None


class Setup:
    """Carry out a plan: ``run`` on any thread, ``cancel`` from any other; ``on_progress`` is called on ``run``'s thread."""

    def __init__(self, plan: Plan, on_progress: Callable[[Progress], None] = lambda progress: None,
                 allow_online: bool = True):
        self.plan = plan
        self.on_progress = on_progress
        self.allow_online = allow_online
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()

    def run(self) -> Report:
        plan = self.plan
        if plan.downloads and not self.allow_online:
            raise SetupError(
                "Online access is off, so nothing can be downloaded",
                hint="allow it in Preferences > System > Network > Allow Online Access, or install offline from a folder "
                     "of wheels (see the Offline Wheels setting and docs/setup.md)")
        self._prepare_folder()
        state = self._load_state()
        steps = plan.steps()
        total_weight = sum(s.weight for s in steps)
        done_weight = 0.0
        redo_rest = False
        with open(plan.log_path, "a", encoding="utf-8") as log:
            log.write("\n== setup-env\n" + "\n".join(plan.describe()) + "\n")
            for index, step in enumerate(steps, 1):
                if self._cancelled.is_set():
                    raise SetupCancelled()

                def report(message: str, within: float = 0.0, _step=step, _index=index, _start=done_weight) -> None:
                    fraction = (_start + _step.weight * min(1.0, within)) / total_weight
                    self.on_progress(Progress(_step.name, _index, len(steps), message, fraction))

                finished = state["done"].get(step.name) == step.fingerprint and self._still_there(step)
                if finished and not redo_rest and step.name != "check":
                    report(f"{step.title}: already done", 1.0)
                    log.write(f"-- {step.name}: already done\n")
                else:
                    interrupted = state.get("running") == step.name
                    state["running"], state["complete"] = step.name, False
                    self._save_state(state)
                    report(step.title + (" (repairing)" if interrupted else ""))
                    log.write(f"-- {step.name}{' (repair)' if interrupted else ''}: {' '.join(step.command)}\n")
                    log.flush()
                    self._do(step, interrupted, log, report)
                    redo_rest = True  # what follows builds on this step, so it runs again too
                    state["done"][step.name] = step.fingerprint
                    state["running"] = None
                    self._save_state(state)
                done_weight += step.weight
            state["complete"] = True
            self._save_state(state)
        report = self._report()
        self.on_progress(Progress("done", len(steps), len(steps), "Ready: " + "; ".join(report.summary()), 1.0))
        return report

    # -- steps --

    def _do(self, step: Step, interrupted: bool, log, report) -> None:
        if step.name == "environment":
            self._run(list(step.command), log, report, step)
        elif step.name in ("torch", "requirements"):
            command = list(step.command)
            if interrupted:  # files from a killed pip may be half written; put them down again
                command.insert(command.index("install") + 1, "--force-reinstall")
            self._run(command, log, report, step)
        elif step.name == "backend":
            self._link_backend()
        else:
            self._check(step, log, report)

    def _link_backend(self) -> None:
        plan = self.plan
        if not (plan.backend_root / "backend" / "__init__.py").is_file():
            raise SetupError(f"the backend package is missing from {plan.backend_root}", hint="reinstall the add-on")
        purelib = command_output([str(plan.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
        if purelib is None:
            raise SetupError(f"the environment's Python does not run: {plan.python}",
                             hint="remove the environment and set it up again")
        # A path file, not a copy: the add-on's folder keeps its path across updates, so the
        # environment always runs the backend that matches the installed add-on.
        Path(purelib.strip(), PTH_NAME).write_text(str(plan.backend_root) + "\n", encoding="utf-8")

    def _check(self, step: Step, log, report) -> None:
        plan = self.plan
        lines = self._run(list(step.command), log, report, step, show_output=False)
        try:
            doctor = json.loads("\n".join(lines))
        except ValueError:
            raise SetupError("doctor printed something that is not its JSON report", hint=f"see the log: {plan.log_path}") from None
        torch_version = self._run([str(plan.python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                                  log, report, step, show_output=False)
        result = Report(str(plan.python), doctor["backend"]["python"], torch_version[-1].strip(), doctor.get("devices", []))
        (plan.state_dir / REPORT_NAME).write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")

    def _report(self) -> Report:
        return Report.from_json(json.loads((self.plan.state_dir / REPORT_NAME).read_text(encoding="utf-8")))

    def _still_there(self, step: Step) -> bool:
        """A step marked done whose result was deleted since (say, the whole venv) must run again."""
        if step.name == "environment":
            return self.plan.python.is_file()
        return True

    # -- processes --

    def _run(self, command: list[str], log, report, step: Step, show_output: bool = True) -> list[str]:
        log.flush()
        with self._lock:
            if self._cancelled.is_set():
                raise SetupCancelled()
            try:
                self._process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if show_output else log,
                    stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                    env=self._environment(), cwd=str(self.plan.env_dir), creationflags=no_window())
            except OSError as exc:
                raise SetupError(f"could not run {command[0]}: {exc.strerror or exc}",
                                 hint=f"see the log: {self.plan.log_path}") from None
        process = self._process
        lines: list[str] = []
        errors: list[str] = []
        within = 0.0
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            if show_output:
                log.write(line + "\n")
            if line.startswith("ERROR:"):
                errors.append(line[len("ERROR:"):].strip())
            if show_output:
                parsed = parse_pip_line(line)
                if parsed is not None:
                    message, phase = parsed
                    within = max(within, phase)
                    report(f"{step.title}: {message}", within)
        code = process.wait()
        log.flush()
        with self._lock:
            self._process = None
        if self._cancelled.is_set():
            log.write(f"-- {step.name}: cancelled\n")
            raise SetupCancelled()
        if code != 0:
            log.write(f"-- {step.name}: failed with exit code {code}\n")
            raise self._failure(step, errors or lines[-3:], code)
        return lines

    def _failure(self, step: Step, details: list[str], code: int) -> SetupError:
        plan = self.plan
        detail = details[-1] if details else f"exit code {code}"
        hint = f"see the log: {plan.log_path}"
        if "No matching distribution" in detail or "Could not find a version" in " ".join(details):
            if plan.wheels_dir is not None:
                hint = (f"the wheels folder has no match for this Python {plan.interpreter_version} on "
                        f"{plan.machine.system}; fill it with 'pip download' (docs/setup.md), " + hint)
            else:
                hint = "check the internet connection and the chosen torch build, " + hint
        return SetupError(f"{step.title} failed: {detail}", hint=hint)

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        if self.plan.wheels_dir is not None:
            # Offline means the folder and nothing else: no configured indexes, links or constraints.
            env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
            env["PIP_CONFIG_FILE"] = os.devnull
        return env

    # -- state --

    def _prepare_folder(self) -> None:
        env_dir = self.plan.env_dir
        if env_dir.exists() and any(env_dir.iterdir()) and not (env_dir / STATE_DIR).is_dir():
            raise SetupError(f"{env_dir} already holds other files",
                             hint="choose an empty or new folder; setup-env only repairs environments it made")
        self.plan.state_dir.mkdir(parents=True, exist_ok=True)

    def _load_state(self) -> dict:
        try:
            state = json.loads((self.plan.state_dir / STATE_NAME).read_text(encoding="utf-8"))
            if isinstance(state.get("done"), dict):
                return state
        except (OSError, ValueError):
            pass
        return {"done": {}, "running": None, "complete": False}

    def _save_state(self, state: dict) -> None:
        path = self.plan.state_dir / STATE_NAME
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(state, indent=2), encoding="utf-8")
        partial.replace(path)


def remove_environment(env_dir: Path) -> None:
    """Delete an environment setup-env made; refuses folders it did not make."""
    env_dir = Path(env_dir)
    if not env_dir.exists():
        return
    if not (env_dir / STATE_DIR).is_dir():
        raise SetupError(f"{env_dir} was not made by setup-env, so it is left alone", hint="delete it yourself if you mean to")
    try:
        shutil.rmtree(env_dir)
    except OSError as exc:
        raise SetupError(f"could not remove {env_dir}: {exc.strerror or exc}",
                         hint="stop the backend first (it may be using files there), then try again") from None
