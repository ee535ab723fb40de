"""The job engine: one worker owns the accelerator, jobs from every client queue FIFO.

Events for a job (accepted, progress, result, cancelled, error) go to the job's ``sink``,
a callable taking a header and buffers; the server's sink queues them for the client's writer
thread, so a slow or frozen client never stalls the worker.
"""

from __future__ import annotations

import collections
import itertools
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import pipelines
from .errors import BackendError, JobCancelled
from .mesh import Mesh
from .mesh.export import atomic_write, encode_glb, save_textures
from .mesh.lods import make_lods
from .pipelines.base import JobContext, JobRequest, Pipeline, PipelineOutput
from .protocol import MAX_LODS, Buffer, ErrorCode, error_header
from .timings import TimingRecords

Sink = Callable[[dict[str, Any], list[Buffer]], None]
DEFAULT_MAX_QUEUE = 32
DEFAULT_KEEP_ALIVE_S = 600.0


@dataclass
class Job:
    id: str
    request: JobRequest
    owner: Any
    sink: Sink
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # when it began running; ``elapsed`` counts from here everywhere
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    stage: str = ""
    step: int | None = None
    total: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"job": self.id, "pipeline": self.request.pipeline, "state": self.state,
                "stage": self.stage, "step": self.step, "total": self.total}


class JobEngine:
    """FIFO queue plus the single worker thread that runs jobs.

    Args:
        runtime: the process's Runtime (device + memory manager), handed to every job.
        output_dir: where every finished result is also written (GLB + JSON); None disables it.
        weights_dir: passed to pipelines that look for checkpoints in a user folder.
        max_queue: queued jobs beyond this are refused with ``busy``.
        keep_alive_s: after this long without a job the worker releases accelerator memory
            (weights stay in host RAM); 0 never does.
        timings: where finished jobs' stage timings are recorded and plans read them; None keeps none.
    """

    def __init__(self, runtime: Any, output_dir: Path | None, weights_dir: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 keep_alive_s: float = DEFAULT_KEEP_ALIVE_S, timings: TimingRecords | None = None):
        self.runtime = runtime
        self.timings = timings
        self.output_dir = output_dir
        self.weights_dir = weights_dir
        self.max_queue = max_queue
        self.keep_alive_s = keep_alive_s
        self._release_requests: list[Callable[[dict[str, Any]], None]] = []
        self._idle_release_at: float | None = None  # monotonic time of the next idle release, set by the worker
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._pipelines: dict[str, Pipeline] = {}
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)

    # -- client-facing --------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            self._pipelines[name] = pipelines.get(name)(weights_dir=self.weights_dir)
        return self._pipelines[name]

    def submit(self, request: JobRequest, owner: Any, sink: Sink) -> Job:
        """Validate and queue a job; raises BackendError (unknown pipeline, bad parameter, bad LOD count, busy)."""
        if not 0 <= request.lods <= MAX_LODS:
            raise BackendError(ErrorCode.BAD_MESSAGE, f"submit: 'lods' = {request.lods} is outside 0 to {MAX_LODS}",
                               hint=f"ask for 0 (none) to {MAX_LODS} decimated copies, each with half the triangles of the one before")
        request = self.pipeline(request.pipeline).validate(request)
        with self._lock:
            if self._stopping:
                raise BackendError(ErrorCode.SHUTTING_DOWN, "the backend is shutting down")
            if len(self._queue) >= self.max_queue:
                raise BackendError(ErrorCode.BUSY, f"{len(self._queue)} jobs are already queued",
                                   hint="wait for a job to finish, or cancel one")
            job = Job(id=f"j{next(self._ids)}", request=request, owner=owner, sink=sink)
            self._queue.append(job)
            position = len(self._queue) - 1 + (self._running is not None)
            sink({"op": "accepted", "job": job.id, "position": position, "pipeline": request.pipeline,
                  "params": request.params}, [])
            self._lock.notify_all()
        return job

    def plan(self, request: JobRequest) -> dict[str, Any]:
        """What a job of ``request`` would take here and now (see backend/planning.py); queues nothing."""
        from .planning import plan_job

        if self.runtime is None or self.runtime.memory is None:
            raise BackendError(ErrorCode.INTERNAL, "this backend has no memory manager to plan with",
                               hint="plans need the runtime that `serve` and `generate` create")
        return plan_job(self.pipeline(request.pipeline), request, self.runtime.memory, self.timings)

    def cancel(self, job_id: str, owner: Any = None) -> bool:
        """Cancel a queued or running job. Returns False when there is no such job (of this owner)."""
        with self._lock:
            for job in self._queue:
                if job.id == job_id and (owner is None or job.owner is owner):
                    self._queue.remove(job)
                    job.state = "cancelled"
                    job.sink({"op": "cancelled", "job": job.id, "stage": None}, [])
                    return True
            running = self._running
            if running is not None and running.id == job_id and (owner is None or running.owner is owner):
                running.cancel.set()
                return True
        return False

    def drop_owner(self, owner: Any) -> None:
        """A client went away: drop its queued jobs and cancel its running one."""
        with self._lock:
            for job in [j for j in self._queue if j.owner is owner]:
                self._queue.remove(job)
                job.state = "cancelled"
            if self._running is not None and self._running.owner is owner:
                self._running.cancel.set()

    def status(self) -> dict[str, Any]:
        with self._lock:
            running = self._running.describe() if self._running else None
            if running:
                began = self._running.started
                running["elapsed"] = round(time.monotonic() - began, 3) if began is not None else 0.0
            release_in = None if self._idle_release_at is None else round(max(0.0, self._idle_release_at - time.monotonic()), 1)
            return {"queue": [j.describe() for j in self._queue], "running": running,
                    "keep_alive_s": self.keep_alive_s, "idle_release_in_s": release_in}

    def request_release(self, reply: Callable[[dict[str, Any]], None]) -> None:
        """Free accelerator memory as soon as no job runs (now, when idle); ``reply`` hears what was freed."""
        with self._lock:
            self._release_requests.append(reply)
            self._lock.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to exit after ``stop``; returns whether it did."""
        if self._worker.is_alive():
            self._worker.join(timeout)
        return not self._worker.is_alive()

    def stop(self) -> None:
        """Refuse new jobs, cancel queued and running ones, and let the worker exit."""
        with self._lock:
            self._stopping = True
            for job in self._queue:
                job.state = "cancelled"
                job.sink({"op": "cancelled", "job": job.id, "stage": None}, [])
            self._queue.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._lock.notify_all()

    # -- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                job, replies = self._next_task()
                if job is None and replies is None:
                    return
                if job is not None:
                    job.state = "running"
                    self._running, self._idle_release_at = job, None
            if replies is not None:
                self._release(replies)
                continue
            self.execute(job, finished=self._job_finished)

    def _job_finished(self) -> None:
        with self._lock:
            self._running = None
            self._schedule_idle_release()
            self._lock.notify_all()

    def _next_task(self) -> tuple[Job | None, list[Callable[[dict[str, Any]], None]] | None]:
        """Under the lock: a release asked for (or due after idling), else the next job; (None, None) to stop."""
        while True:
            if self._release_requests:
                replies, self._release_requests = self._release_requests, []
                return None, replies
            if self._queue:
                return self._queue.popleft(), None
            if self._stopping:
                return None, None
            wait = None if self._idle_release_at is None else self._idle_release_at - time.monotonic()
            if wait is not None and wait <= 0:
                self._idle_release_at = None
                return None, []
            self._lock.wait(wait)

    def _release(self, replies: list[Callable[[dict[str, Any]], None]]) -> None:
        """On the worker, between jobs: the only thread that moves weights."""
        try:
            freed = self.runtime.release() if self.runtime is not None else {"freed": [], "freed_bytes": 0}
        except Exception as exc:  # noqa: BLE001 - a failed release must not end the worker; the askers hear why
            traceback.print_exc(file=sys.stderr)
            freed = {"error": f"{type(exc).__name__}: {exc}"}
        if not replies:
            print(f"idle for {self.keep_alive_s:g} s: released {freed.get('freed_bytes', 0) / 2**20:.0f} MiB of accelerator memory",
                  file=sys.stderr, flush=True)
        for reply in replies:
            reply(freed)

    def _schedule_idle_release(self) -> None:
        holds = self.runtime is not None and self.runtime.holds_memory()
        self._idle_release_at = time.monotonic() + self.keep_alive_s if self.keep_alive_s > 0 and holds else None

    def execute(self, job: Job, finished: Callable[[], None] | None = None) -> None:
        """Run one job to its end, sending exactly one closing event (result, cancelled or error).

        ``finished`` runs after the runtime's between-jobs work and before the closing event goes
        out, so a client holding its result already finds the engine idle in ``status``.
        """
        started = job.started = time.monotonic()
        timings: dict[str, float] = {}
        stage_started = [started]

        def report(event: dict[str, Any]) -> None:
            now = time.monotonic()
            if event["stage"] != job.stage and job.stage:
                timings[job.stage] = timings.get(job.stage, 0.0) + now - stage_started[0]
                stage_started[0] = now
            elif not job.stage:
                stage_started[0] = now
            job.stage, job.step, job.total = event["stage"], event["step"], event["total"]
            job.sink({"op": "progress", "job": job.id, "elapsed": round(now - started, 3), **event}, [])

        ctx = JobContext(report, job.cancel.is_set, self.runtime)
        try:
            ctx.check_cancelled()
            output = self.pipeline(job.request.pipeline).execute(job.request, ctx)
            lods = make_lods(output.mesh, job.request.lods,
                             lambda level: ctx.progress("lods", level - 1, job.request.lods, f"LOD {level} of {job.request.lods}"))
            if job.stage:
                timings[job.stage] = timings.get(job.stage, 0.0) + time.monotonic() - stage_started[0]
            timings["total"] = time.monotonic() - started
            closing = self._result(job, output, lods, timings)
            job.state = "done"
            if self.timings is not None and self.runtime is not None:
                self.timings.record(job.request.pipeline, self.runtime.device, self.runtime.status()["mode"], job.request.params, timings)
        except JobCancelled:
            job.state = "cancelled"
            closing = {"op": "cancelled", "job": job.id, "stage": job.stage or None}, []
        except BackendError as exc:
            job.state = "failed"
            closing = error_header(exc.code, exc.message, exc.hint, job=job.id, stage=job.stage or None), []
        except MemoryError:
            job.state = "failed"
            closing = error_header(ErrorCode.OUT_OF_MEMORY, "the machine ran out of memory", job=job.id, stage=job.stage or None,
                                   hint="try --memory stage or stream, a lower resolution, or close other programs"), []
        except Exception as exc:  # noqa: BLE001 - a bug in a pipeline must not take the backend down
            job.state = "failed"
            traceback.print_exc(file=sys.stderr)
            code = ErrorCode.OUT_OF_MEMORY if "out of memory" in str(exc).lower() else ErrorCode.JOB_FAILED
            closing = error_header(code, f"{type(exc).__name__}: {exc}", job=job.id, stage=job.stage or None,
                                   hint="the backend log has the details; the backend is still running"), []
        finally:
            if self.runtime is not None:
                self.runtime.after_job()
            if finished is not None:
                finished()
        job.sink(*closing)

    def _result(self, job: Job, output: PipelineOutput, lods: list[Mesh],
                timings: dict[str, float]) -> tuple[dict[str, Any], list[Buffer]]:
        mesh = output.mesh
        header: dict[str, Any] = {
            "op": "result",
            "job": job.id,
            "pipeline": job.request.pipeline,
            "params": job.request.params,
            "seed": job.request.params.get("seed"),
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "mesh": {"vertices": mesh.vertex_count, "faces": mesh.face_count, "bounds": mesh.bounds(),
                     "frame": "y_up", "textures": mesh.textures()},
            "lods": [{"vertices": lod.vertex_count, "faces": lod.face_count} for lod in lods],
            "images": sorted(output.images),
            "info": output.info,
            "saved": None,
        }
        if self.output_dir is not None:
            try:
                header["saved"] = self._save(job, output, header)
            except OSError as exc:
                # The mesh still reaches the client over the socket; only the copy on disk failed.
                header["save_error"] = f"could not write the result to {self.output_dir}: {exc.strerror or exc}"
        buffers = mesh.to_buffers()
        for level, lod in enumerate(lods, start=1):
            buffers += [Buffer(f"lod{level}.{buf.name}", buf.dtype, buf.shape, buf.data) for buf in lod.to_buffers()]
        buffers += [Buffer.from_bytes(f"image.{name}", data) for name, data in sorted(output.images.items())]
        return header, buffers

    def _save(self, job: Job, output: PipelineOutput, header: dict[str, Any]) -> dict[str, str]:
        # Names are built only from our own values, never from user input, so they can't escape the folder.
        stem = time.strftime("%Y%m%d-%H%M%S") + f"-{job.request.pipeline}-{job.id}"
        glb = self.output_dir / f"{stem}.glb"
        meta = self.output_dir / f"{stem}.json"
        record = {k: header[k] for k in ("job", "pipeline", "params", "seed", "timings", "mesh", "info")}
        if job.request.text:
            record["text"] = job.request.text
        atomic_write(glb, encode_glb(output.mesh))
        atomic_write(meta, json.dumps(record, indent=2).encode("utf-8"))
        return {"glb": str(glb), "json": str(meta), **{f"texture.{slot}": path for slot, path in save_textures(output.mesh, glb).items()}}
