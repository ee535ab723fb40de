"""Looking at the machine: operating system, CPU architecture, NVIDIA driver and GPUs, ROCm. Stdlib only."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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
    run = run or command_output
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


def command_output(command: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=20, check=False,
                              creationflags=no_window())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def no_window() -> int:
    return getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
