"""The backend's own Python environment, created with the torch build that fits the machine. Stdlib only.

``python -m backend setup-env DIR`` (and the add-on's "Set up backend" button) make a virtual
environment in DIR with any Python 3.10+ (Blender's own included), install torch from the
index that has the right build, then the backend's other requirements, make the bundled
``backend`` package importable there and finish by running ``doctor`` inside it.

Every finished step leaves a fingerprint in DIR/hy3d-setup/state.json, so running it again
skips what is done, reinstalls a step that was cut short, and redoes a step whose plan
changed (another torch build, say). Nothing here imports more than the standard library:
Blender's Python runs this module before any of the heavy packages exist.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TORCH_VERSION = "2.13.0"
TORCH_CHOICES = ("auto", "cpu", "cuda", "rocm", "mps")
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
ROCM_BUILD = "rocm6.4"
REQUIREMENTS_FILE = Path(__file__).with_name("requirements.txt")
STATE_DIR = "hy3d-setup"
STATE_NAME = "state.json"
LOG_NAME = "setup.log"
REPORT_NAME = "report.json"
PTH_NAME = "hunyuan3d_backend.pth"
MIN_PYTHON = (3, 10)


class SetupError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" ({self.hint})" if self.hint else "")


class SetupCancelled(Exception):
    pass


# -- the machine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaBuild:
    """A PyTorch CUDA wheel build and the oldest NVIDIA driver its CUDA toolkit runs on."""

    tag: str
    linux_driver: tuple[int, ...]
    windows_driver: tuple[int, ...]

    def runs_on(self, driver: tuple[int, ...], system: str) -> bool:
        return driver >= (self.windows_driver if system == "Windows" else self.linux_driver)


# Newest first. Each minimum is the driver NVIDIA's CUDA release notes list for that toolkit's GA
# release, not the looser minor-version-compatibility floor: PyTorch's kernels may need PTX the
# older driver can't compile.
CUDA_BUILDS = (
    CudaBuild("cu128", (570, 26), (570, 65)),
    CudaBuild("cu126", (560, 28, 3), (560, 76)),
    CudaBuild("cu124", (550, 54, 14), (551, 61)),
    CudaBuild("cu121", (530, 30, 2), (531, 14)),
    CudaBuild("cu118", (520, 61, 5), (520, 6)),
)


@dataclass(frozen=True)
class Machine:
    """What decides the torch build: operating system, CPU architecture and GPU drivers."""

    system: str
    arch: str
    nvidia_driver: str | None = None  # as nvidia-smi prints it, e.g. "550.54.14"
    gpus: tuple[str, ...] = ()
    rocm: bool = False

    @property
    def apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.arch in ("arm64", "aarch64")

    def describe(self) -> str:
        parts = [f"{self.system} {self.arch}"]
        if self.nvidia_driver:
            parts.append(f"NVIDIA driver {self.nvidia_driver}" + (f" ({', '.join(self.gpus)})" if self.gpus else ""))
        if self.rocm:
            parts.append("ROCm")
        return ", ".join(parts)


def probe_machine(run: Callable[[Sequence[str]], str | None] | None = None,
                  system: str | None = None, arch: str | None = None,
                  rocm_paths: Sequence[str] = ("/opt/rocm",)) -> Machine:
    """Look at this machine. ``run`` returns a command's stdout or None when it can't run (tests pass a fake)."""
    run = run or _command_output
    system = system or platform.system()
    arch = (arch or platform.machine()).lower()
    driver, gpus = None, ()
    if system != "Darwin":
        output = run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"])
        if output:
            driver, gpus = parse_nvidia_smi(output)
    rocm = system == "Linux" and (any(os.path.isdir(p) for p in rocm_paths) or run(["rocminfo"]) is not None)
    return Machine(system, arch, driver, gpus, rocm)


def parse_nvidia_smi(output: str) -> tuple[str | None, tuple[str, ...]]:
    """``550.54.14, NVIDIA GeForce RTX 4090`` lines -> (the oldest driver version listed, GPU names)."""
    driver, gpus = None, []
    for line in output.splitlines():
        version, _, name = line.partition(",")
        parsed = parse_version(version)
        if parsed is None:
            continue
        if driver is None or parsed < parse_version(driver):
            driver = version.strip()
        if name.strip():
            gpus.append(name.strip())
    return driver, tuple(gpus)


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)*)\s*", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def format_version(version: Sequence[int]) -> str:
    return ".".join(str(p) for p in version)


def _command_output(command: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=20, check=False,
                              creationflags=_no_window())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _no_window() -> int:
    return getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchBuild:
    variant: str  # "cpu", "cu128", "rocm6.4", "mps"
    index_url: str | None  # None: pip's configured index (PyPI unless the user set another)
    reason: str


def choose_torch(machine: Machine, requested: str = "auto") -> TorchBuild:
    """The torch build for ``machine``; ``requested`` overrides the automatic choice."""
    if requested not in TORCH_CHOICES:
        raise SetupError(f"unknown torch build {requested!r}", hint="choose one of " + ", ".join(TORCH_CHOICES))
    if requested == "mps" or (requested == "auto" and machine.apple_silicon):
        if machine.system != "Darwin":
            raise SetupError("the mps build is for Macs", hint="choose cpu, cuda or rocm on this machine")
        return TorchBuild("mps", None, "Apple Silicon: the default macOS build uses the GPU through Metal (mps)")
    if requested == "cuda" or (requested == "auto" and machine.nvidia_driver):
        if machine.system == "Darwin":
            raise SetupError("PyTorch has no CUDA build for macOS", hint="choose mps on Apple Silicon, cpu otherwise")
        return _cuda_build(machine, forced=requested == "cuda")
    if requested == "rocm" or (requested == "auto" and machine.rocm):
        if machine.system != "Linux":
            raise SetupError("PyTorch's ROCm builds are for Linux only", hint="choose cpu on this machine")
        return TorchBuild(ROCM_BUILD, PYTORCH_INDEX + ROCM_BUILD, "AMD ROCm found" if machine.rocm else "ROCm build as asked")
    return _cpu_build(machine, "as asked" if requested == "cpu" else "no NVIDIA, AMD or Apple GPU found")


def _cuda_build(machine: Machine, forced: bool) -> TorchBuild:
    if machine.nvidia_driver is None:
        newest = CUDA_BUILDS[0]
        return TorchBuild(newest.tag, PYTORCH_INDEX + newest.tag, "no NVIDIA driver found; newest CUDA build as asked")
    driver = parse_version(machine.nvidia_driver)
    for build in CUDA_BUILDS:
        if build.runs_on(driver, machine.system):
            return TorchBuild(build.tag, PYTORCH_INDEX + build.tag,
                              f"NVIDIA driver {machine.nvidia_driver} runs CUDA {build.tag[2:-1]}.{build.tag[-1]} builds")
    oldest = CUDA_BUILDS[-1]
    needed = format_version(oldest.windows_driver if machine.system == "Windows" else oldest.linux_driver)
    if forced:
        raise SetupError(f"NVIDIA driver {machine.nvidia_driver} is too old for any PyTorch CUDA build (needs {needed} or newer)",
                         hint="update the NVIDIA driver, or choose the cpu build")
    return _cpu_build(machine, f"NVIDIA driver {machine.nvidia_driver} is older than {needed}, the oldest a CUDA build runs on; "
                               "update it to use the GPU")


def _cpu_build(machine: Machine, why: str) -> TorchBuild:
    # PyPI's torch for Linux is the multi-gigabyte CUDA build; the CPU-only wheels live on PyTorch's own index.
    index = PYTORCH_INDEX + "cpu" if machine.system == "Linux" else None
    return TorchBuild("cpu", index, f"CPU build: {why}")


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
        backend_root=(backend_root or Path(__file__).resolve().parent.parent).absolute(),
        wheels_dir=Path(wheels_dir).absolute() if wheels_dir is not None else None,
        index_override=index,
    )


def interpreter_version(interpreter: str) -> str:
    if os.path.abspath(interpreter) == os.path.abspath(sys.executable):
        return platform.python_version()
    output = _command_output([interpreter, "-c", "import platform; print(platform.python_version())"])
    if output is None:
        raise SetupError(f"can't run the Python interpreter {interpreter}", hint="choose a Python 3.10+ executable")
    return output.strip()


# -- running it -----------------------------------------------------------------------------------


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
        purelib = _command_output([str(plan.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
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
                    env=self._environment(), cwd=str(self.plan.env_dir), creationflags=_no_window())
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


def parse_pip_line(line: str) -> tuple[str, float] | None:
    """A pip output line -> (what to show, how far into the step that is), or None for noise."""
    text = line.strip()
    if text.startswith("Collecting "):
        return f"collecting {requirement_name(text[len('Collecting '):])}", 0.1
    if text.startswith("Downloading "):
        match = re.match(r"Downloading (\S+?)(?:\s+\((.+)\))?$", text)
        if match:
            size = f" ({match.group(2)})" if match.group(2) else ""
            return f"downloading {_distribution(match.group(1))}{size}", 0.2
    if text.startswith("Processing "):
        return f"unpacking {_distribution(text[len('Processing '):].split(' ')[0])}", 0.2
    if text.startswith("Installing collected packages:"):
        names = [n.strip() for n in text.split(":", 1)[1].split(",") if n.strip()]
        return f"installing {len(names)} package{'s' if len(names) != 1 else ''}", 0.6
    if text.startswith("Successfully installed"):
        return "installed", 1.0
    if text.startswith("Requirement already satisfied:"):
        return f"already there: {requirement_name(text.split(':', 1)[1].strip())}", 0.1
    return None


def _distribution(location: str) -> str:
    """``.../torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl`` -> ``torch 2.13.0+cpu``."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    parts = name.split("-")
    return f"{parts[0]} {parts[1]}" if name.endswith(".whl") and len(parts) >= 5 else name


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


# -- command line ---------------------------------------------------------------------------------


def add_setup_env_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "setup-env", help="create a Python environment for the backend, with the torch build for this machine",
        description="Create a virtual environment in DIR with this Python, install the torch build that fits this machine "
                    "(CUDA by NVIDIA driver, the default build on Apple Silicon, else CPU) and the backend's requirements, "
                    "then run doctor in it. Running it again resumes or repairs; it needs only the standard library.")
    parser.add_argument("env_dir", type=Path, metavar="DIR", help="the environment's folder (new, or one setup-env made)")
    parser.add_argument("--torch", default="auto", choices=TORCH_CHOICES,
                        help="torch build: auto (default) picks from the NVIDIA driver, Apple Silicon or ROCm; or name one")
    parser.add_argument("--torch-version", default=TORCH_VERSION, metavar="VERSION",
                        help=f"torch release to install (default {TORCH_VERSION}, the one the backend is tested with)")
    parser.add_argument("--index", metavar="URL",
                        help="where torch comes from: a package index URL, or 'default' for pip's configured index "
                             "(default: PyTorch's index for the chosen build)")
    parser.add_argument("--wheels", type=Path, metavar="DIR",
                        help="install offline, only from this folder of wheels (nothing is downloaded)")
    parser.add_argument("--python", metavar="EXE", help="make the environment from this Python (default: the one running this)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (interpreter, index, packages, versions) and stop")
    parser.add_argument("--remove", action="store_true", help="delete the environment DIR (only one setup-env made)")
    return parser


def cmd_setup_env(args: argparse.Namespace) -> int:
    try:
        if args.remove:
            remove_environment(args.env_dir)
            print(f"removed {args.env_dir}", file=sys.stderr)
            return 0
        plan = make_plan(args.env_dir, args.torch, wheels_dir=args.wheels, index=args.index,
                         torch_version=args.torch_version, interpreter=args.python)
        if args.dry_run:
            print("\n".join(plan.describe()))
            return 0
        print(f"setting up {plan.env_dir} (log: {plan.log_path})", file=sys.stderr)
        setup = Setup(plan, on_progress=_print_progress)
        try:
            report = setup.run()
        except KeyboardInterrupt:
            setup.cancel()
            raise SetupCancelled() from None
    except SetupError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except SetupCancelled:
        print("cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    print("ready:\n  " + "\n  ".join(report.summary()), file=sys.stderr)
    print(f"run the backend with: {report.python} -m backend serve", file=sys.stderr)
    return 0


def _print_progress(progress: Progress) -> None:
    print(f"[{progress.index}/{progress.total}] {progress.fraction:4.0%} {progress.message}", file=sys.stderr, flush=True)
