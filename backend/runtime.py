"""The backend's hold on the machine: the execution device and the memory manager.

Created once per process (in the worker that owns the accelerator, or by ``generate``), and
handed to every job through ``JobContext.runtime``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Runtime:
    device: str
    memory: Any = None

    @classmethod
    def create(cls, device: str = "auto", memory: str = "auto") -> "Runtime":
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(device=device)

    def describe_devices(self) -> list[dict[str, Any]]:
        return [{"name": "CPU", "kind": "cpu", "cores": os.cpu_count(), "compute_dtype": "float32"}]

    def status(self) -> dict[str, Any]:
        return {"device": self.device, "mode": "cpu", "resident": []}

    def after_job(self) -> None:
        """Release cached allocator blocks between jobs."""
