"""The whole setup decided before anything runs: interpreter, environment, torch build, packages, steps. Stdlib only."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .builds import TORCH_VERSION, TorchBuild, choose_torch
from .errors import SetupError
from .machine import Machine, command_output, format_version, probe_machine

BACKEND_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS_FILE = BACKEND_DIR / "requirements.txt"
STATE_DIR = "hy3d-setup"
STATE_NAME = "state.json"
LOG_NAME = "setup.log"
REPORT_NAME = "report.json"
MIN_PYTHON = (3, 10)


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The backend's requirements, one per line, comments dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SetupError(f"the backend's requirement list is missing: {path}",
                         hint="reinstall the add-on (or check out the whole repository)") from exc
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def venv_python(env_dir: Path, system: str | None = None) -> Path:
    if (system or platform.system()) == "Windows":
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


@dataclass(frozen=True)
class Step:
    """One resumable unit of work; ``fingerprint`` changes whenever what the step would do changes."""

    name: str
    title: str
    weight: float
    command: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.name, self.command]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """Everything setup-env will do, decided before anything runs (``--dry-run`` prints it).

    Args:
        interpreter: the Python the environment is made from (Blender's when run from the add-on).
        interpreter_version: its version, e.g. "3.11.7".
        env_dir: the environment's folder.
        machine: what was found on this machine.
        torch: the chosen torch build and where it comes from.
        torch_version: the exact torch release installed.
        requirements: the backend's other requirements.
        backend_root: the folder that holds the ``backend`` package; the environment points at it.
        wheels_dir: install only from this folder of wheels, never from the network.
    """

    interpreter: str
    interpreter_version: str
    env_dir: Path
    machine: Machine
    torch: TorchBuild
    torch_version: str
    requirements: tuple[str, ...]
    backend_root: Path
    wheels_dir: Path | None = None
    index_override: str | None = None

    @property
    def python(self) -> Path:
        return venv_python(self.env_dir, self.machine.system)

    @property
    def state_dir(self) -> Path:
        return self.env_dir / STATE_DIR

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_NAME

    @property
    def torch_requirement(self) -> str:
        # PyTorch's own indexes tag each build (2.13.0+cu128); pinning the tag makes pip replace a
        # different build already installed instead of calling 2.13.0 satisfied.
        tagged = self.wheels_dir is None and self.torch.index_url is not None and self.torch_index == self.torch.index_url
        return f"torch=={self.torch_version}" + (f"+{self.torch.variant}" if tagged else "")

    @property
    def torch_index(self) -> str | None:
        if self.index_override is not None:
            return None if self.index_override == "default" else self.index_override
        return self.torch.index_url

    @property
    def downloads(self) -> bool:
        return self.wheels_dir is None

    def pip(self, *requirements: str, index: str | None = None) -> tuple[str, ...]:
        command = [str(self.python), "-m", "pip", "install", "--progress-bar", "off"]
        if self.wheels_dir is not None:
            command += ["--isolated", "--no-index", "--find-links", str(self.wheels_dir)]
        elif index is not None:
            command += ["--index-url", index]
        return (*command, *requirements)

    def steps(self) -> list[Step]:
        return [
            Step("environment", "Creating the environment", 1, (self.interpreter, "-m", "venv", str(self.env_dir))),
            Step("torch", f"Installing torch {self.torch_version} ({self.torch.variant})", 6,
                 self.pip(self.torch_requirement, index=self.torch_index)),
            # torch is named again, pinned, so no requirement can swap the chosen build for another.
            Step("requirements", "Installing the backend's requirements", 4, self.pip(self.torch_requirement, *self.requirements)),
            Step("backend", "Linking the bundled backend", 0.2, ("link", str(self.backend_root))),
            Step("check", "Checking the environment (doctor)", 1, (str(self.python), "-m", "backend", "doctor", "--json")),
        ]

    def describe(self) -> list[str]:
        lines = [
            f"interpreter:  {self.interpreter} (Python {self.interpreter_version})",
            f"environment:  {self.env_dir}",
            f"machine:      {self.machine.describe()}",
            f"torch:        {self.torch_requirement} {self.torch.variant} ({self.torch.reason})",
        ]
        if self.wheels_dir is not None:
            lines.append(f"source:       only the wheels in {self.wheels_dir} (no downloads)")
        else:
            lines.append(f"torch index:  {self.torch_index or 'pip default index'}")
            lines.append("other index:  pip default index")
        lines.append("packages:     " + ", ".join([self.torch_requirement, *self.requirements]))
        lines.append(f"backend:      {self.backend_root / 'backend'} (linked, not copied: add-on updates apply at once)")
        lines.append("steps:")
        for number, step in enumerate(self.steps(), 1):
            lines.append(f"  {number}. {step.title}: {' '.join(step.command)}")
        return lines


def make_plan(env_dir: Path, torch: str = "auto", *, wheels_dir: Path | None = None, index: str | None = None,
              torch_version: str = TORCH_VERSION, interpreter: str | None = None, machine: Machine | None = None,
              backend_root: Path | None = None, requirements: Sequence[str] | None = None) -> Plan:
    """Decide the whole setup. ``index``: None picks the index of the torch build, "default" uses pip's, else a URL."""
    interpreter = interpreter or sys.executable
    version = interpreter_version(interpreter)
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_PYTHON:
        raise SetupError(f"{interpreter} is Python {version}; the backend needs {format_version(MIN_PYTHON)} or newer",
                         hint="run setup-env with a newer Python (Blender 4.2 and later ship one)")
    if wheels_dir is not None and not Path(wheels_dir).is_dir():
        raise SetupError(f"wheels folder not found: {wheels_dir}", hint="pass the folder the wheels were downloaded into")
    machine = machine or probe_machine()
    listed = list(requirements) if requirements is not None else read_requirements()
    return Plan(
        interpreter=interpreter,
        interpreter_version=version,
        env_dir=Path(env_dir).absolute(),
        machine=machine,
        torch=choose_torch(machine, torch),
        torch_version=torch_version,
        requirements=tuple(r for r in listed if requirement_name(r) != "torch"),
        backend_root=(backend_root or BACKEND_DIR.parent).absolute(),
        wheels_dir=Path(wheels_dir).absolute() if wheels_dir is not None else None,
        index_override=index,
    )


def interpreter_version(interpreter: str) -> str:
    if os.path.abspath(interpreter) == os.path.abspath(sys.executable):
        return platform.python_version()
    output = command_output([interpreter, "-c", "import platform; print(platform.python_version())"])
    if output is None:
        raise SetupError(f"can't run the Python interpreter {interpreter}", hint="choose a Python 3.10+ executable")
    return output.strip()
