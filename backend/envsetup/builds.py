"""Which torch build fits a machine: CUDA by driver version, ROCm, Apple Silicon, else CPU. Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SetupError
from .machine import Machine, format_version, parse_version

TORCH_VERSION = "2.13.0"
TORCH_CHOICES = ("auto", "cpu", "cuda", "rocm", "mps")
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
ROCM_BUILD = "rocm6.4"


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
