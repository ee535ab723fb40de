"""The add-on's side of the conversation with the backend, as a state machine. No bpy.

``Session.pump`` runs on Blender's main thread: it applies the events the connection's
threads queued (``connection.py``) to the state the panel draws, and keeps each finished
mesh in ``history`` and in ``arrived`` for ``app.pump`` to put in the scene. Requests given
to ``submit_all`` while a job runs wait in ``pending`` and are sent one by one as each job ends.
``want_plan`` asks the backend for the plan of what the panel would generate, once the inputs
have stopped changing for ``PLAN_DEBOUNCE_S``, and again after each job (its timings change it).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import meshdata
from .backend import protocol
from .connection import Connected, Connection, ConnectionSettings, Lost, Received
from .errors import AddonError
from .finishing_options import FinishingOptions
from .placement import Placement
from .tasks import Outcome

UNRESPONSIVE_S = 5.0
HISTORY_LENGTH = 5
PLAN_DEBOUNCE_S = 0.4


class Phase(Enum):
    OFFLINE = "offline"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class SessionError(AddonError):
    """A request the session can't send as things stand."""


@dataclass(frozen=True)
class GenerationRequest:
    pipeline: str
    params: dict[str, Any]
    text: str | None = None
    image_path: str | None = None
    views: dict[str, str] = field(default_factory=dict)  # more pictures by input name (multiview models' left, back, right)
    quality: str = "full"  # "full", "preview" (the pipeline's preview values) or "refined" (a preview made again at full quality)
    full_params: dict[str, Any] | None = None  # a preview's parameters at full quality: what Refine sends
    placement: Placement | None = None  # where the result goes; None: at the 3D cursor
    finishing: FinishingOptions = field(default_factory=FinishingOptions)  # done in Blender after the import
    mesh: meshdata.MeshInput | None = None  # the scene object to paint (Texture Selected)

    def picture_names(self) -> list[str]:
        """The inputs this request sends pictures for (``image`` and any named views); none for a prompt."""
        return ["image", *self.views] if self.image_path is not None else []

    def label(self) -> str:
        source = os.path.basename(self.image_path) if self.image_path else f'"{(self.text or "")[:40]}"'
        if self.mesh is not None:
            source = f"{self.mesh.object_name} from {source}"
        seed = self.params.get("seed")
        return f"{source} ({self.pipeline}{f', seed {seed}' if seed is not None else ''})"


@dataclass
class JobState:
    ref: int
    request: GenerationRequest
    id: str | None = None
    stage: str = ""
    step: int | None = None
    total: int | None = None
    position: int = 0
    cancel_requested: bool = False
    file_loaded: bool = False  # another .blend was opened (or File > New) while it ran

    @property
    def label(self) -> str:
        return self.request.label()

    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total and self.step is not None else 0.0


@dataclass
class HistoryEntry:
    label: str
    mesh: meshdata.MeshArrays
    result: dict[str, Any]
    request: GenerationRequest
    object_name: str = ""
    file_loaded: bool = False
    pictures: dict[str, bytes] = field(default_factory=dict)  # intermediate pictures by the backend's name, PNG
    lods: tuple[meshdata.MeshArrays, ...] = ()  # the LODs the backend made, level 1 first
    ref: int = 0  # the job's request number: names the entry's fold-out in the History
    picture_images: dict[str, str] = field(default_factory=dict)  # picture title -> the packed image showing it

    @staticmethod
    def picture_title(name: str) -> str:
        """How the History and the image's name call a picture: ``texture_view_0`` -> ``view 0``, ``text_image`` -> ``text image``."""
        return name.removeprefix("texture_").replace("_", " ")


class Session:
    """The connection, the job and the results as the panel shows them. Main thread only."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.phase = Phase.OFFLINE
        self.problem: Outcome | None = None
        self.welcome: dict[str, Any] | None = None
        self.status: dict[str, Any] | None = None
        self.job: JobState | None = None
        self.last: Outcome | None = None
        self.history: collections.deque[HistoryEntry] = collections.deque(maxlen=HISTORY_LENGTH)
        self.arrived: list[HistoryEntry] = []  # results not yet in the scene
        self.pending: collections.deque[GenerationRequest] = collections.deque()  # to send when the job ends
        self.unresponsive = False
        self.plan: dict[str, Any] | None = None  # the backend's answer to the latest plan asked for
        self.plan_error: str = ""
        self._plan_wanted: tuple[Any, dict[str, Any]] | None = None  # (what it depends on, the plan op to send)
        self._plan_due = 0.0
        self._plan_sent: Any = None  # what the plan in flight or shown depends on
        self._plan_ref = ""
        self._connection: Connection | None = None
        self._closed: list[Connection] = []  # their reaper threads may still be finishing
        self._numbers = itertools.count(1)
        self._refs = itertools.count(1)

    # -- commands from operators ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """A job is in flight."""
        return self.job is not None

    @property
    def busy(self) -> bool:
        return self.job is not None or self.phase is Phase.STARTING

    @property
    def backend_pid(self) -> int | None:
        c = self._connection
        return c.backend.process.pid if c is not None and c.backend is not None else None

    def pipelines(self) -> list[dict[str, Any]]:
        return list(self.welcome.get("pipelines", [])) if self.welcome else []

    def connect(self, settings: ConnectionSettings) -> None:
        """(Re)connect: drops any current connection (and stops a backend we started)."""
        self._drop_connection()
        self.phase, self.problem, self.welcome, self.status, self.unresponsive = Phase.STARTING, None, None, None, False
        self.plan, self.plan_error, self._plan_sent = None, "", None
        self._connection = Connection(next(self._numbers), settings, self.events, after=tuple(self.closing()))
        self._connection.start()

    def submit(self, request: GenerationRequest) -> None:
        """Send a generation job; progress and the result arrive through ``pump``."""
        if self.phase is not Phase.READY:
            raise SessionError("The backend is not connected", "press Start Backend (or Connect) first")
        if self.job is not None:
            raise SessionError("A job is already running", "wait for it or cancel it")
        buffers = []
        pictures = {"image": request.image_path, **request.views} if request.image_path else {}
        for name, path in pictures.items():
            try:
                with open(path, "rb") as f:
                    buffers.append(protocol.Buffer.from_bytes(name, f.read()))
            except OSError as exc:
                raise SessionError(f"Can't read the {'image' if name == 'image' else f'{name} view'} {path}: "
                                   f"{exc.strerror or exc}", "choose a PNG or JPEG file") from None
        if request.mesh is not None:
            buffers += [protocol.Buffer.from_array(protocol.MESH_POSITIONS_BUFFER, request.mesh.positions),
                        protocol.Buffer.from_array(protocol.MESH_FACES_BUFFER, request.mesh.faces)]
        ref = next(self._refs)
        header: dict[str, Any] = {"op": "submit", "ref": ref, "pipeline": request.pipeline, "params": request.params}
        if request.text is not None:
            header["text"] = request.text
        lods = request.finishing.backend_lods(request.params)
        if lods:
            header["lods"] = lods
        self.job = JobState(ref=ref, request=request)
        self.last = None
        self._connection.send(header, buffers)

    def submit_all(self, requests: list[GenerationRequest]) -> None:
        """Send the first request now (or queue it behind the running job) and queue the rest; each is its own job."""
        if self.phase is not Phase.READY:
            raise SessionError("The backend is not connected", "press Start Backend (or Connect) first")
        waiting = list(requests)
        if self.job is None and waiting:
            self.submit(waiting.pop(0))
        self.pending.extend(waiting)

    def drop_pending(self, index: int) -> None:
        """Take a queued request off the queue before it is sent."""
        if 0 <= index < len(self.pending):
            del self.pending[index]

    def cancel(self) -> None:
        job = self.job
        if job is None:
            return
        job.cancel_requested = True
        if job.id is not None and self.phase is Phase.READY:
            self._connection.send({"op": "cancel", "job": job.id})

    def refresh_pipelines(self) -> bool:
        """Have the backend look at its weights again; the new model list arrives through ``pump``."""
        if self.phase is not Phase.READY:
            return False
        self._connection.send({"op": "pipelines", "ref": "pipelines"})
        return True

    def request_status(self) -> None:
        if self.phase is Phase.READY:
            self._connection.send({"op": "status", "ref": "status"})

    def release_memory(self) -> bool:
        """Have the backend give its GPU memory back now (its weights stay in RAM); status follows."""
        if self.phase is not Phase.READY:
            return False
        self._connection.send({"op": "release", "ref": "release"})
        return True

    def want_plan(self, request: GenerationRequest | None) -> None:
        """The inputs the panel would generate from now; their plan is asked for once they stay unchanged a moment.

        The plan depends on the model, the parameters and which pictures or prompt the job takes,
        not on what they show, so typing a prompt or picking another picture asks nothing new.
        """
        if request is None:
            self._plan_wanted, self._plan_sent, self.plan, self.plan_error = None, None, None, ""
            return
        key = (request.pipeline, json.dumps(request.params, sort_keys=True), request.text is not None, tuple(request.picture_names()))
        if self._plan_wanted is not None and self._plan_wanted[0] == key:
            return
        header: dict[str, Any] = {"op": "plan", "pipeline": request.pipeline, "params": request.params,
                                  "inputs": request.picture_names()}
        if request.text is not None:
            header["text"] = request.text
        self._plan_wanted, self._plan_due = (key, header), time.monotonic() + PLAN_DEBOUNCE_S

    def _send_plan_when_due(self) -> None:
        wanted = self._plan_wanted
        if wanted is None or wanted[0] == self._plan_sent or self.phase is not Phase.READY or time.monotonic() < self._plan_due:
            return
        self._plan_sent, self._plan_ref = wanted[0], f"plan-{next(self._refs)}"
        self._connection.send({**wanted[1], "ref": self._plan_ref})

    def close(self) -> None:
        """End everything: threads, socket, and the backend if we started it (without waiting for them)."""
        self._drop_connection()
        self.phase = Phase.OFFLINE

    def closing(self) -> list[Connection]:
        """Closed connections still finishing (a backend exiting, threads ending)."""
        self._closed = [c for c in self._closed if c.threads_alive()]
        return list(self._closed)

    def threads_alive(self) -> bool:
        """Whether any thread of the current or a closed connection still runs."""
        return bool(self.closing()) or (self._connection is not None and self._connection.threads_alive())

    def take_arrived(self) -> list[HistoryEntry]:
        arrived, self.arrived = self.arrived, []
        return arrived

    # -- main thread ------------------------------------------------------------------------------

    def pump(self, budget_s: float = 0.002) -> bool:
        """Apply queued events for at most about ``budget_s``; returns whether anything visible changed.

        Several events may be applied in one call, so a caller looking between calls can miss
        a progress step; the job's state always ends at the last one applied.
        """
        changed = self._watch_health()
        self._send_plan_when_due()
        deadline = time.perf_counter() + budget_s
        while time.perf_counter() < deadline:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if self._connection is None or event.connection != self._connection.number:
                continue  # from a connection already dropped
            if isinstance(event, Received) and event.header.get("op") == "pong":
                continue
            changed = True
            if self._apply(event):
                break  # a mesh arrived: importing it is enough work for one tick
        return changed

    def _watch_health(self) -> bool:
        c = self._connection
        if c is None or self.phase is not Phase.READY:
            return False
        if c.backend is not None and c.backend.exit_code() is not None:
            self._on_lost(c.lost("process ended"))
            return True
        unresponsive = time.monotonic() - c.last_seen > UNRESPONSIVE_S
        if unresponsive != self.unresponsive:
            self.unresponsive = unresponsive
            return True
        return False

    def _apply(self, event: Connected | Lost | Received) -> bool:
        if isinstance(event, Connected):
            self.phase, self.welcome = Phase.READY, event.welcome
            self.request_status()
        elif isinstance(event, Lost):
            self._on_lost(event)
        else:
            return self._on_message(event)
        return False

    def _on_lost(self, event: Lost) -> None:
        self._drop_connection(shutdown_backend=False)
        self.phase, self.unresponsive = Phase.FAILED, False
        self.pending.clear()
        self.problem = Outcome("error", event.message, event.hint, event.log_lines)
        if self.job is not None:
            self._finish_job(Outcome("error", f"The job was lost: {event.message}", event.hint, event.log_lines))

    def _on_message(self, event: Received) -> bool:
        header, job = event.header, self.job
        op = header.get("op")
        if op == "status":
            self.status = header
            return False
        if op == "released":
            self.request_status()
            return False
        if op == "pipelines" and self.welcome is not None:
            self.welcome = {**self.welcome, "pipelines": header.get("pipelines", [])}
            self._plan_sent = None  # weights may have arrived: plan again
            return False
        if op in ("plan", "error") and header.get("ref") == self._plan_ref:
            self.plan, self.plan_error = (header, "") if op == "plan" else (None, header.get("message", "no plan"))
            return False
        if job is None:
            return False
        if op == "accepted" and header.get("ref") == job.ref:
            job.id, job.position = header["job"], header.get("position", 0)
            if job.cancel_requested:
                self._connection.send({"op": "cancel", "job": job.id})
        elif header.get("job") != job.id and not (op == "error" and header.get("ref") == job.ref):
            return False
        elif op == "progress":
            job.stage, job.step, job.total = header.get("stage") or "", header.get("step"), header.get("total")
        elif op == "cancelled":
            self._finish_job(Outcome("cancelled", "Cancelled" + (f" during {header['stage']}" if header.get("stage") else "")))
        elif op == "error":
            self._finish_job(Outcome("error", header.get("message", "The job failed"), header.get("hint", "")))
        elif op == "result" and event.unreadable:
            self._finish_job(Outcome("error", f"The backend's mesh could not be read: {event.unreadable}",
                                     "update the add-on and the backend together"))
        elif op == "result":
            entry = HistoryEntry(job.label, event.mesh, header, job.request, file_loaded=job.file_loaded,
                                 pictures=event.pictures, lods=event.lods, ref=job.ref)
            self.history.appendleft(entry)
            self.arrived.append(entry)
            self.job = None
            self._plan_sent = None  # the job's timings are recorded now: plan again
            self._submit_next()
            return True
        return False

    def _finish_job(self, outcome: Outcome) -> None:
        self.job, self.last = None, outcome
        self._plan_sent = None
        self._submit_next()

    def _submit_next(self) -> None:
        """Send the next queued request; one that can't be sent (its picture gone) is reported and skipped."""
        while self.pending and self.job is None and self.phase is Phase.READY:
            request = self.pending.popleft()
            try:
                self.submit(request)
            except SessionError as exc:
                self.last = Outcome("error", f"{request.label()}: {exc.message}", exc.hint)

    def _drop_connection(self, shutdown_backend: bool = True) -> None:
        if self._connection is not None:
            self._connection.close(shutdown_backend=shutdown_backend)
            self._closed.append(self._connection)
            self._connection = None
