"""Per-stage timings of finished jobs, kept on disk, and the time a planned job is expected to take.

Every finished job adds its seconds per stage, with its pipeline, device, memory mode and
parameters, to a JSON file in the backend's state folder (``HY3D_HOME/state/timings.json``), so
estimates survive restarts. A plan takes the most recent job of the same pipeline on the same
device in the same memory mode whose other parameters match best, and scales each stage that a
pipeline declares proportional to a parameter (``Pipeline.scales_with``, e.g. sampling to
``steps``, or to a power of it: a grid's resolution cubed) by the ratio of the two values.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .mesh.export import atomic_write
from .paths import data_home

KEPT_PER_PIPELINE = 20
# Parameters that change the result but not the work.
_NO_COST = frozenset({"seed"})


def default_timings_file() -> Path:
    return data_home() / "state" / "timings.json"


class TimingRecords:
    """The recorded jobs of one machine; safe to use from the worker and the client threads at once.

    Args:
        path: the JSON file; created on the first record, a damaged one is started afresh.
        keep: most recent jobs kept per (pipeline, device).
    """

    def __init__(self, path: Path, keep: int = KEPT_PER_PIPELINE):
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] | None = None

    def record(self, pipeline: str, device: str, mode: str, params: Mapping[str, Any], timings: Mapping[str, float]) -> None:
        entry = {"pipeline": pipeline, "device": device, "mode": mode, "params": dict(params),
                 "timings": {k: round(float(v), 4) for k, v in timings.items()}, "finished": time.time()}
        with self._lock:
            records = self._load() + [entry]
            same = [r for r in records if (r["pipeline"], r["device"]) == (pipeline, device)]
            dropped = {id(r) for r in same[:-self.keep]}
            self._records = [r for r in records if id(r) not in dropped]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, json.dumps({"jobs": self._records}, indent=1).encode("utf-8"))
            except OSError as exc:
                print(f"could not save job timings to {self.path}: {exc.strerror or exc}", file=sys.stderr, flush=True)

    def estimate(self, pipeline: str, device: str, mode: str, params: Mapping[str, Any],
                 scales_with: Mapping[str, str | tuple[str, float]]) -> tuple[dict[str, Any] | None, str]:
        """(the expected time, how it was worked out) or (None, why there is none)."""
        with self._lock:
            candidates = [r for r in self._load() if (r["pipeline"], r["device"]) == (pipeline, device)]
        if not candidates:
            return None, f"{pipeline} has not run on {device} yet; the first job's time is recorded for the next plans"
        same_mode = [r for r in candidates if r["mode"] == mode]
        if not same_mode:
            ran = ", ".join(sorted({r["mode"] for r in candidates}))
            return None, f"{pipeline} has run on {device} only in {ran} mode, not in {mode} mode"
        rules = {stage: (rule, 1.0) if isinstance(rule, str) else rule for stage, rule in scales_with.items()}
        scaled_params = {param for param, _power in rules.values()}

        def differing(record: dict[str, Any]) -> list[str]:
            return sorted(k for k in set(params) | set(record["params"])
                          if k not in _NO_COST | scaled_params and record["params"].get(k) != params.get(k))

        best = min(reversed(same_mode), key=lambda r: len(differing(r)))  # ties: the most recent
        stages: dict[str, float] = {}
        scaled: dict[str, str] = {}
        for stage, seconds in best["timings"].items():
            if stage == "total":
                continue
            param, power = rules.get(stage, (None, 1.0))
            then, now = best["params"].get(param), params.get(param)
            if param and isinstance(then, (int, float)) and isinstance(now, (int, float)) and then > 0 and now != then:
                seconds = seconds * (now / then) ** power
                scaled[stage] = f"{param} {then} -> {now}" + (f" (time ~ {param}^{power:g})" if power != 1 else "")
            stages[stage] = round(seconds, 3)
        overhead = max(0.0, best["timings"].get("total", 0.0) - sum(best["timings"].get(s, 0.0) for s in stages))
        total = sum(stages.values()) + overhead
        differs = differing(best)
        basis = f"the job of {time.strftime('%Y-%m-%d %H:%M', time.localtime(best['finished']))}"
        basis += "; " + ", ".join(f"{stage} scaled by {how}" for stage, how in scaled.items()) if scaled else ", as it ran"
        if differs:
            basis += "; it differed in " + ", ".join(differs)
        return {"seconds": round(total, 2), "stages": stages, "scaled": scaled, "differs": differs, "basis": basis}, basis

    def _load(self) -> list[dict[str, Any]]:
        if self._records is None:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                jobs = raw["jobs"] if isinstance(raw, dict) else None
                self._records = [r for r in jobs if _well_formed(r)] if isinstance(jobs, list) else []
            except (OSError, ValueError, KeyError):
                self._records = []
        return list(self._records)


def _well_formed(record: Any) -> bool:
    return (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("pipeline", "device", "mode"))
            and isinstance(record.get("params"), dict) and isinstance(record.get("timings"), dict)
            and isinstance(record.get("finished"), (int, float)))
