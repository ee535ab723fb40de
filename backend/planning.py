"""A plan before a job: the memory mode, the peak memory and the time a job of a request would take here, now.

The memory figures come from the memory manager (``MemoryManager.plan``: the same decision
``--memory auto`` makes, on the sizes read from the weights files' headers); the time from the
stage timings of earlier jobs (``backend/timings.py``). Nothing is queued or loaded, so a plan
is answered at once, even while a job runs.
"""

from __future__ import annotations

from typing import Any

from .memory.manager import Declarations
from .pipelines.base import JobRequest, Pipeline
from .timings import TimingRecords


def plan_job(pipeline: Pipeline, request: JobRequest, memory: Any, timings: TimingRecords | None) -> dict[str, Any]:
    """Validate ``request`` as a job would be (missing weights included) and plan it.

    ``request.images`` may name pictures without their bytes (``None``): a plan needs to know
    which inputs a job takes, not what they show.
    """
    request = pipeline.validate(request)
    declared = Declarations()
    pipeline.register_components(declared, request)
    plan = memory.plan(declared)
    if timings is None:
        expected, reason = None, "this backend keeps no job timings"
    else:
        expected, reason = timings.estimate(pipeline.name, plan["device"], plan["mode"], request.params, pipeline.scales_with)
    return {"pipeline": pipeline.name, "params": request.params, **plan, "time": expected,
            "time_unknown": None if expected is not None else reason}
