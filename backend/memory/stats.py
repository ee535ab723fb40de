"""Per-stage figures: peak accelerator memory, peak host RSS, bytes moved and how fast."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

GB = 1e9


@dataclass
class StageStats:
    stage: str
    mode: str
    seconds: float = 0.0
    peak_device_bytes: int | None = None  # None on the CPU, where host RSS is the figure
    peak_host_rss_bytes: int = 0
    h2d_bytes: int = 0
    h2d_seconds: float = 0.0
    on_demand_h2d_bytes: int = 0  # stream mode: bytes of routed experts really moved
    on_demand_dense_h2d_bytes: int = 0  # ... and what moving every expert at every pass would have
    components: list[str] = field(default_factory=list)
    downgraded_from: str | None = None

    @property
    def h2d_gbps(self) -> float | None:
        return self.h2d_bytes / self.h2d_seconds / GB if self.h2d_seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["h2d_gbps"] = None if self.h2d_gbps is None else round(self.h2d_gbps, 2)
        out["seconds"] = round(self.seconds, 4)
        out["h2d_seconds"] = round(self.h2d_seconds, 4)
        return out

    def summary(self) -> str:
        parts = [f"{self.stage}: {self.seconds:.2f} s in {self.mode} mode"]
        if self.peak_device_bytes is not None:
            parts.append(f"peak accelerator {self.peak_device_bytes / GB:.2f} GB")
        parts.append(f"peak host RSS {self.peak_host_rss_bytes / GB:.2f} GB")
        if self.h2d_bytes:
            rate = f" at {self.h2d_gbps:.1f} GB/s" if self.h2d_gbps else ""
            parts.append(f"moved {self.h2d_bytes / GB:.2f} GB to the device{rate}")
        if self.on_demand_dense_h2d_bytes:
            parts.append(f"of which experts {self.on_demand_h2d_bytes / GB:.2f} GB of "
                         f"{self.on_demand_dense_h2d_bytes / GB:.2f} GB (only the routed ones)")
        return ", ".join(parts)


class HostPeak:
    """Peak resident set size over a span of code.

    On Linux the kernel's high-water mark is reset at the start (``/proc/self/clear_refs``) and
    read at the end, which is exact. Elsewhere a thread samples the RSS every few milliseconds.
    """

    _CLEAR_REFS = "/proc/self/clear_refs"
    _STATUS = "/proc/self/status"

    def __init__(self, interval_s: float = 0.005):
        self._interval = interval_s
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = False

    def __enter__(self) -> HostPeak:
        try:
            with open(self._CLEAR_REFS, "w") as f:
                f.write("5")
            self._kernel = self._high_water_mark() is not None
        except OSError:
            self._kernel = False
        if not self._kernel:
            self._sampled = current_rss()
            self._thread = threading.Thread(target=self._sample, name="host-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        if self._kernel:
            return self._high_water_mark() or current_rss()
        return max(self._sampled, current_rss())

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._sampled = max(self._sampled, current_rss())

    def _high_water_mark(self) -> int | None:
        try:
            with open(self._STATUS) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None


def current_rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
