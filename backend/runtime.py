"""The backend's hold on the machine: the execution device, its precision policy and the memory manager.

Created once per process (in the worker that owns the accelerator, or by ``generate``), and
handed to every job through ``JobContext.runtime``. torch is imported only when one is created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BackendError
from .protocol import ErrorCode

if TYPE_CHECKING:
    from .devices import DeviceInfo, HardwareProbe, PrecisionPolicy
    from .memory import MemoryManager


@dataclass
class Runtime:
    device: str
    memory: MemoryManager | None = None
    devices: list[DeviceInfo] = field(default_factory=list)
    policy: PrecisionPolicy | None = None

    @classmethod
    def create(
        cls,
        device: str = "auto",
        memory: str = "auto",
        precision: str = "auto",
        *,
        probe: HardwareProbe | None = None,
        smoke: Callable[[str, str], str | None] | None = None,
        budget_bytes: int | None = None,
        free_memory: Callable[[], tuple[int, int]] | None = None,
    ) -> Runtime:
        """Discover the devices, pick one, smoke-test its precision and start the memory manager.

        Args:
            device: ``auto``, ``cuda``, ``cuda:N``, ``mps`` or ``cpu``.
            memory: ``auto``, ``resident``, ``stage``, ``stream`` or ``cpu`` (``cpu`` implies ``--device cpu``).
            precision: ``auto``, ``float16``, ``bfloat16`` or ``float32``.
            probe / smoke / free_memory: hardware seen through these instead of the real machine (tests).
            budget_bytes: fixed memory budget instead of measuring free memory.
        """
        from .devices import PrecisionPolicy, discover, pick_device, smoke_test
        from .memory import MemoryManager

        devices = discover(probe)
        if memory == "cpu":
            if device not in ("auto", "cpu"):
                raise BackendError(ErrorCode.BAD_PARAMETER, f"--memory cpu runs on the CPU, not on {device}",
                                   hint="drop --device, or pick another --memory mode")
            device = "cpu"
        chosen = pick_device(devices, device)
        policy = PrecisionPolicy(chosen, precision, smoke or smoke_test)
        policy.choose()  # the start-up smoke test, so a broken dtype is known before the first job
        manager = MemoryManager(policy, memory, budget_bytes=budget_bytes, free_memory=free_memory)
        return cls(device=chosen.torch_device, memory=manager, devices=devices, policy=policy)

    def describe_devices(self) -> list[dict[str, Any]]:
        """Every device found, with the one in use marked and the precision float16 weights compute in."""
        from .devices import choose_precision

        described = []
        for info in self.devices:
            selected = info.torch_device == self.device
            choice = self.policy.choose() if selected and self.policy else choose_precision(info)
            described.append({**info.describe(), "selected": selected, "compute_dtype": choice.dtype,
                              "precision_why": choice.reason})
        return described

    def status(self) -> dict[str, Any]:
        """Mode, why, where each component is, memory figures and the latest stages' figures (JSON-able).

        The memory manager's published snapshot: safe to read from any thread while a job runs.
        """
        if self.memory is None:
            return {"device": self.device, "mode": "none", "components": []}
        return self.memory.describe()

    def after_job(self) -> None:
        """Between jobs: components stay resident; cached, unused accelerator memory is handed back."""
        if self.memory is not None:
            self.memory.after_job()

    def release(self) -> dict[str, Any]:
        """Give back the accelerator memory the components hold (see ``MemoryManager.release``)."""
        return self.memory.release() if self.memory is not None else {"freed": [], "freed_bytes": 0, "device": self.device}

    def holds_memory(self) -> bool:
        return self.memory is not None and self.memory.holds_executable_copies()
