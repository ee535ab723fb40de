"""Device discovery and the precision policy.

Hardware is probed on demand through a ``probe`` object (``SystemProbe`` by default), never at
import, so tests fake any machine by handing in their own probe. The precision table is pure
data on strings ("float16", "bfloat16", "float32"); a smoke test per (device, dtype) runs the
operations models use and overrides the table where the device gets them wrong.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import BackendError
from .protocol import ErrorCode

FLOAT16, BFLOAT16, FLOAT32 = "float16", "bfloat16", "float32"
PRECISIONS = ("auto", FLOAT16, BFLOAT16, FLOAT32)

# Turing TU116/TU117 parts: float16 math is unreliable (NaNs, black images) although the
# compute capability (7.5) says it is supported.
_FLOAT16_BROKEN_GPUS = re.compile(r"GTX 16\d\d|\bT(400|500|550|600|1000|1200)\b|MX(450|550)")


@dataclass
class DeviceInfo:
    """One place a model can execute.

    Args:
        kind: ``cuda``, ``mps`` or ``cpu``.
        index: the CUDA ordinal (0 for the others).
        name: marketing name of the GPU or CPU.
        total_bytes / free_bytes: device memory (host RAM for ``mps`` and ``cpu``).
        capability: CUDA compute capability as (major, minor).
        cores: logical CPU cores (``cpu`` only).
        native_bf16: the CPU has AVX512-BF16 or AMX.
        os_version: macOS version tuple (``mps`` only).
    """

    kind: str
    index: int = 0
    name: str = ""
    total_bytes: int = 0
    free_bytes: int = 0
    capability: tuple[int, int] | None = None
    cores: int | None = None
    native_bf16: bool = False
    os_version: tuple[int, ...] | None = None

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.torch_device, "kind": self.kind, "name": self.name,
                               "total_bytes": self.total_bytes, "free_bytes": self.free_bytes}
        if self.capability is not None:
            out["compute_capability"] = f"{self.capability[0]}.{self.capability[1]}"
        if self.cores is not None:
            out["cores"] = self.cores
        if self.kind == "cpu":
            out["native_bf16"] = self.native_bf16
        if self.os_version is not None:
            out["os_version"] = ".".join(map(str, self.os_version))
        return out


class HardwareProbe(Protocol):
    def cuda(self) -> list[DeviceInfo]: ...
    def mps(self) -> DeviceInfo | None: ...
    def cpu(self) -> DeviceInfo: ...


class SystemProbe:
    """Asks torch, psutil and the OS about this machine."""

    def cuda(self) -> list[DeviceInfo]:
        import torch

        if not torch.cuda.is_available():
            return []
        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = cuda_memory(index)
            found.append(DeviceInfo("cuda", index, props.name, total, free, (props.major, props.minor)))
        return found

    def mps(self) -> DeviceInfo | None:
        import psutil
        import torch

        if not torch.backends.mps.is_available():
            return None
        release = platform.mac_ver()[0]
        version = tuple(int(part) for part in release.split(".") if part.isdigit()) or None
        memory = psutil.virtual_memory()
        return DeviceInfo("mps", 0, "Apple GPU", memory.total, memory.available, os_version=version)

    def cpu(self) -> DeviceInfo:
        import psutil

        memory = psutil.virtual_memory()
        name, flags = _cpu_name_and_flags()
        native_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
        return DeviceInfo("cpu", 0, name, memory.total, memory.available, cores=os.cpu_count(), native_bf16=native_bf16)


def cuda_memory(device: Any) -> tuple[int, int]:
    """(free, total) bytes this process may use on a CUDA device (an index or a torch.device).

    Free counts what torch's caching allocator holds without using. Both respect a cap put on the
    process with ``torch.cuda.set_per_process_memory_fraction`` (how a benchmark on a large card
    shows what a small one does), which the driver's figures alone do not.
    """
    import torch

    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    free += torch.cuda.memory_reserved(device) - allocated
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _device: 1.0)(device)
    if fraction >= 1.0:
        return free, total
    cap = int(total * fraction)
    return max(min(free, cap - allocated), 0), cap


def _cpu_name_and_flags() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), set()
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (name.group(1).strip() if name else platform.machine()), set(flags.group(1).split()) if flags else set()


def discover(probe: HardwareProbe | None = None) -> list[DeviceInfo]:
    """Every device on this machine, accelerators first (CUDA, then MPS), the CPU last."""
    probe = probe or SystemProbe()
    devices = list(probe.cuda())
    mps = probe.mps()
    if mps is not None:
        devices.append(mps)
    devices.append(probe.cpu())
    return devices


def pick_device(devices: list[DeviceInfo], requested: str = "auto") -> DeviceInfo:
    """The device for ``--device``: ``auto`` takes the CUDA GPU with the most memory, then MPS, then the CPU."""
    requested = requested.strip().lower()
    if requested == "auto":
        cuda = [d for d in devices if d.kind == "cuda"]
        if cuda:
            return max(cuda, key=lambda d: (d.total_bytes, -d.index))
        return next((d for d in devices if d.kind == "mps"), next(d for d in devices if d.kind == "cpu"))
    wanted = "cuda:0" if requested == "cuda" else requested
    for device in devices:
        if device.torch_device == wanted:
            return device
    raise BackendError(
        ErrorCode.BAD_PARAMETER,
        f"device {requested!r} is not available on this machine",
        hint="available: auto, " + ", ".join(d.torch_device for d in devices),
    )


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: str
    reason: str


def choose_precision(device: DeviceInfo, made_for: str = FLOAT16, requested: str = "auto") -> PrecisionChoice:
    """The compute dtype on ``device`` of a component whose model family computes in ``made_for``.

    ``made_for`` is the family's declaration (Hunyuan3D-1: float16), never the dtype its file
    happens to be stored in. ``requested`` is the user's ``--precision``: ``auto`` keeps the
    family's precision where the device computes it well; ``bfloat16`` is honoured only where it
    is native; ``float32`` is always honoured.
    """
    if requested not in PRECISIONS:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if made_for not in PRECISIONS[1:]:
        raise BackendError(ErrorCode.INTERNAL, f"a model declares precision {made_for!r}, not one of {', '.join(PRECISIONS[1:])}")
    if requested == FLOAT32:
        return PrecisionChoice(FLOAT32, "float32 requested")
    if device.kind == "cuda":
        return _cuda_precision(device, made_for, requested)
    if device.kind == "mps":
        bf16_ok = device.os_version is not None and device.os_version >= (14,)
        if requested == BFLOAT16 and bf16_ok:
            return PrecisionChoice(BFLOAT16, "bfloat16 requested; supported on macOS 14+")
        if made_for == FLOAT32 and requested == "auto":
            return PrecisionChoice(FLOAT32, "the model is made to compute in float32")
        note = " (bfloat16 needs macOS 14+)" if requested == BFLOAT16 else ""
        return PrecisionChoice(FLOAT16, "Apple GPUs compute float16 natively" + note)
    if requested == BFLOAT16 and device.native_bf16:
        return PrecisionChoice(BFLOAT16, "bfloat16 requested; the CPU has native bfloat16 (AVX512-BF16/AMX)")
    note = "; bfloat16 needs AVX512-BF16 or AMX" if requested == BFLOAT16 else ""
    return PrecisionChoice(FLOAT32, "CPUs compute half precision slowly or not at all" + note)


def _cuda_precision(device: DeviceInfo, made_for: str, requested: str) -> PrecisionChoice:
    capability = device.capability or (0, 0)
    cc = f"{capability[0]}.{capability[1]}"
    if capability < (6, 0):
        return PrecisionChoice(FLOAT32, f"compute capability {cc} has no fast float16")
    if _FLOAT16_BROKEN_GPUS.search(device.name):
        return PrecisionChoice(FLOAT32, f"{device.name} computes float16 unreliably")
    bf16_native = capability >= (8, 0)
    if requested == BFLOAT16 and bf16_native:
        return PrecisionChoice(BFLOAT16, f"bfloat16 requested; native on compute capability {cc}")
    if requested == FLOAT16 or made_for == FLOAT16:
        note = f" (bfloat16 needs compute capability 8.0, this is {cc})" if requested == BFLOAT16 else ""
        return PrecisionChoice(FLOAT16, "the model is made to compute in float16" + note if made_for == FLOAT16 else "float16 requested")
    if made_for == BFLOAT16:
        if bf16_native:
            return PrecisionChoice(BFLOAT16, "the model is made to compute in bfloat16")
        return PrecisionChoice(FLOAT32, f"the model is made for bfloat16, which compute capability {cc} only emulates")
    return PrecisionChoice(FLOAT32, "the model is made to compute in float32")


# What to try next when a dtype fails its smoke test.
_FALLBACK = {BFLOAT16: FLOAT16, FLOAT16: FLOAT32}


def smoke_test(torch_device: str, dtype: str) -> str | None:
    """Run the operations models use in ``dtype`` on the device; None when all work, else what failed.

    Each result is compared with the same operation in float32 on the CPU, so a device that
    returns NaNs or garbage in half precision fails as surely as one that raises.
    """
    import torch
    import torch.nn.functional as F

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    x, w = rand(16, 32), rand(32, 24)
    image, kernel = rand(1, 8, 12, 12), rand(8, 8, 3, 3)
    q, k, v = rand(1, 2, 8, 16), rand(1, 2, 8, 16), rand(1, 2, 8, 16)
    checks: list[tuple[str, Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = [
        ("matmul", torch.matmul, (x, w)),
        ("conv2d", lambda a, b: F.conv2d(a, b, padding=1), (image, kernel)),
        ("layer_norm", lambda a: F.layer_norm(a, (32,)), (x,)),
        ("group_norm", lambda a: F.group_norm(a, 4), (image,)),
        ("attention", F.scaled_dot_product_attention, (q, k, v)),
    ]
    tolerance = 1e-4 if dtype == FLOAT32 else 5e-2
    for name, op, args in checks:
        try:
            reference = op(*args)
            result = op(*(a.to(torch_device, torch_dtype) for a in args)).float().cpu()
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            return f"{name} in {dtype} on {torch_device} raised: {str(exc).splitlines()[0]}"
        if not torch.isfinite(result).all():
            return f"{name} in {dtype} on {torch_device} returned non-finite values"
        error = (result - reference).abs().max().item() / max(reference.abs().max().item(), 1e-6)
        if error > tolerance:
            return f"{name} in {dtype} on {torch_device} is off by {error:.2g} (relative)"
    return None


@dataclass
class PrecisionPolicy:
    """Resolves a component's declared precision to its compute dtype on one device, smoke-tested.

    Args:
        device: where components execute.
        requested: the user's ``--precision`` (``auto``, ``float16``, ``bfloat16``, ``float32``).
        smoke: ``smoke(torch_device, dtype) -> None | failure``; injectable for tests.
    """

    device: DeviceInfo
    requested: str = "auto"
    smoke: Callable[[str, str], str | None] = smoke_test
    _verdicts: dict[str, str | None] = field(default_factory=dict, repr=False)

    def choose(self, made_for: str = FLOAT16) -> PrecisionChoice:
        choice = choose_precision(self.device, made_for, self.requested)
        dtype, reason = choice.dtype, choice.reason
        while True:
            failure = self._verdict(dtype)
            if failure is None:
                return PrecisionChoice(dtype, reason)
            fallback = _FALLBACK.get(dtype)
            if fallback is None:
                raise BackendError(
                    ErrorCode.INTERNAL,
                    f"{self.device.torch_device} cannot run basic float32 operations: {failure}",
                    hint="try --device cpu, or update the GPU driver and PyTorch",
                )
            dtype, reason = fallback, f"{dtype} failed its smoke test ({failure}); using {fallback}"

    def compute_dtype(self, made_for: str = FLOAT16) -> str:
        return self.choose(made_for).dtype

    def _verdict(self, dtype: str) -> str | None:
        if dtype not in self._verdicts:
            self._verdicts[dtype] = self.smoke(self.device.torch_device, dtype)
        return self._verdicts[dtype]

    def describe(self) -> dict[str, Any]:
        choice = self.choose(FLOAT16)
        return {
            "requested": self.requested,
            "float16_models_compute_in": choice.dtype,
            "why": choice.reason,
            "smoke_tests": {dtype: failure or "passed" for dtype, failure in self._verdicts.items()},
        }


def dtype_name(dtype: Any) -> str:
    """``torch.float16`` -> ``"float16"``; strings pass through."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
