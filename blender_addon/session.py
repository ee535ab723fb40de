"""The add-on's side of the conversation with the backend. No bpy.

Threads: a connection thread starts or reaches the backend, shakes hands and then reads
messages; a writer thread sends what the main thread queues, and a ping whenever it has
been quiet for a second. Both only put events on a queue. ``Session.pump`` runs on
Blender's main thread, applies the events to the state the panel draws, and hands each
finished mesh to the ``import_result`` callback (which does the bpy work).
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from . import launcher, meshdata
from .backend import protocol
from .tasks import Outcome

CLIENT_NAME = "hunyuan3d-blender-addon"
HEARTBEAT_S = 1.0
UNRESPONSIVE_S = 5.0
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 3.0
HISTORY_LENGTH = 5
_CLOSE = object()


class Phase(Enum):
    OFFLINE = "offline"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class SessionError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the backend is: started by us (``launch``) or already running at host:port."""

    launch: launcher.LaunchSettings | None = None
    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""

    def describe(self) -> str:
        return "the bundled backend" if self.launch else f"the backend at {self.host}:{self.port}"


@dataclass(frozen=True)
class GenerationRequest:
    pipeline: str
    params: dict[str, Any]
    text: str | None = None
    image_path: str | None = None

    def label(self) -> str:
        source = os.path.basename(self.image_path) if self.image_path else f'"{self.text[:40]}"'
        seed = self.params.get("seed")
        return f"{source} ({self.pipeline}{f', seed {seed}' if seed is not None else ''})"


@dataclass
class JobState:
    ref: int
    label: str
    id: str | None = None
    stage: str = ""
    step: int | None = None
    total: int | None = None
    position: int = 0
    cancel_requested: bool = False

    def progress_text(self) -> str:
        if self.cancel_requested:
            return "Cancelling..."
        if self.id is None:
            return "Sending..."
        if not self.stage:
            return f"Queued ({self.position} ahead)" if self.position else "Starting..."
        name = self.stage.replace("_", " ").capitalize()
        return f"{name} {self.step}/{self.total}" if self.total else name

    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total and self.step is not None else 0.0


@dataclass
class HistoryEntry:
    label: str
    mesh: meshdata.MeshArrays
    result: dict[str, Any]
    object_name: str = ""


# -- events from the threads --------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    connection: int
    welcome: dict[str, Any]


@dataclass(frozen=True)
class ConnectFailed:
    connection: int
    message: str
    hint: str


@dataclass(frozen=True)
class Disconnected:
    connection: int
    message: str
    hint: str


@dataclass(frozen=True)
class Received:
    connection: int
    header: dict[str, Any]
    mesh: meshdata.MeshArrays | None = None


class Connection:
    """One connection (and, when launching, one backend process) on its own threads."""

    def __init__(self, number: int, settings: ConnectionSettings, events: queue.Queue):
        self.number = number
        self.settings = settings
        self.events = events
        self.backend: launcher.BackendProcess | None = None
        self.last_seen = time.monotonic()
        self._sock: socket.socket | None = None
        self._outbox: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._run, name="hy3d-connection", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="hy3d-writer", daemon=True)

    def start(self) -> None:
        self._reader.start()

    def send(self, header: dict[str, Any], buffers: list[protocol.Buffer] | None = None) -> None:
        self._outbox.put((header, buffers or []))

    def close(self, shutdown_backend: bool = True) -> None:
        """Stop the threads, close the socket and end the backend this connection started."""
        with self._lock:
            self._closing.set()
            backend = self.backend
        if backend is not None and shutdown_backend and self._writer.is_alive():
            self.send({"op": "shutdown"})
        self._outbox.put(_CLOSE)
        if self._writer.is_alive():
            self._writer.join(JOIN_TIMEOUT_S)
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if backend is not None:
            backend.stop()
        if self._reader.is_alive():
            self._reader.join(JOIN_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()

    def threads_alive(self) -> bool:
        return self._reader.is_alive() or self._writer.is_alive()

    # -- connection thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            host, port, token = self._reach_backend()
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            if self._closing.is_set():
                return
            reader = protocol.Reader(sock)
            welcome = self._handshake(sock, reader, token)
            sock.settimeout(None)
            self.last_seen = time.monotonic()
            self.events.put(Connected(self.number, welcome))
            self._writer.start()
            while True:
                message = reader.read()
                self.last_seen = time.monotonic()
                self.events.put(self._decode(message))
        except launcher.LaunchError as exc:
            self._report(ConnectFailed(self.number, exc.message, exc.hint))
        except SessionError as exc:
            self._report(ConnectFailed(self.number, exc.message, exc.hint))
        except ConnectionRefusedError:
            s = self.settings
            self._report(ConnectFailed(self.number, f"Nothing is listening at {s.host}:{s.port}",
                                       f"start it there with: python -m backend serve --port {s.port}, "
                                       "or let the add-on launch the bundled backend"))
        except (protocol.ConnectionClosed, protocol.ProtocolError, OSError) as exc:
            self._report(self.lost(str(exc)))

    def _reach_backend(self) -> tuple[str, int, str]:
        s = self.settings
        if s.launch is None:
            return s.host, s.port, s.token
        with self._lock:
            if self._closing.is_set():
                raise launcher.LaunchError("Backend start was cancelled")
            self.backend = launcher.start(s.launch)
        ready = launcher.wait_ready(self.backend, s.launch.python)
        return ("127.0.0.1" if ready.host in ("0.0.0.0", "localhost") else ready.host), ready.port, ready.token

    def _handshake(self, sock: socket.socket, reader: protocol.Reader, token: str) -> dict[str, Any]:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        protocol.send(sock, {"op": "hello", "protocol": protocol.PROTOCOL_VERSION, "token": token, "client": CLIENT_NAME})
        reply = reader.read().header
        if reply.get("op") == "welcome":
            return reply
        if reply.get("op") == "error":
            raise SessionError(f"The backend refused the connection: {reply.get('message')}", reply.get("hint", ""))
        raise SessionError(f"Unexpected reply to hello: {reply.get('op')!r}",
                           "is that port really a Hunyuan3D for Blender backend?")

    def _decode(self, message: protocol.Message) -> Received:
        header = message.header
        if header.get("op") != "result":
            return Received(self.number, header)
        try:
            arrays = {b.name: b.to_array() for b in message.buffers if b.name in ("positions", "faces", "colors")}
            mesh = meshdata.from_wire(arrays, header.get("mesh", {}).get("frame", "y_up"))
        except (KeyError, ValueError) as exc:
            return Received(self.number, protocol.error_header(
                "bad_result", f"The backend's mesh could not be read: {exc}",
                "update the add-on and the backend together", job=header.get("job")))
        return Received(self.number, header, mesh)

    def lost(self, detail: str) -> Disconnected:
        backend = self.backend
        code = backend.exit_code() if backend is not None else None
        if backend is not None and code is None:
            try:
                code = backend.process.wait(0.5)  # the socket usually closes a moment before the exit status is ready
            except launcher.subprocess.TimeoutExpired:
                code = None
        if code is not None:
            return Disconnected(self.number, f"The backend stopped (exit code {code})",
                                f"press Restart; the backend log is {backend.log_path}")
        return Disconnected(self.number, f"Lost the connection to {self.settings.describe()} ({detail})",
                            "press Restart to connect again")

    def _report(self, event: ConnectFailed | Disconnected) -> None:
        if not self._closing.is_set():
            self.events.put(event)

    # -- writer thread --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._outbox.get(timeout=HEARTBEAT_S)
                except queue.Empty:
                    item = ({"op": "ping"}, [])
                if item is _CLOSE:
                    return
                protocol.send(self._sock, *item)
        except OSError:
            pass  # the reader notices the broken connection and reports it


class Session:
    """The connection, the job and the results as the panel shows them. Main thread only.

    Args:
        import_result: called by ``pump`` with a history index when a mesh has arrived;
            returns the name of the object it created.
    """

    def __init__(self, import_result: Callable[[int], str]):
        self.events: queue.Queue = queue.Queue()
        self.phase = Phase.OFFLINE
        self.problem: Outcome | None = None
        self.welcome: dict[str, Any] | None = None
        self.status: dict[str, Any] | None = None
        self.job: JobState | None = None
        self.last: Outcome | None = None
        self.history: collections.deque[HistoryEntry] = collections.deque(maxlen=HISTORY_LENGTH)
        self.unresponsive = False
        self._import_result = import_result
        self._connection: Connection | None = None
        self._numbers = itertools.count(1)
        self._refs = itertools.count(1)

    # -- commands from operators ----------------------------------------------------------------

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
        self._connection = Connection(next(self._numbers), settings, self.events)
        self._connection.start()

    def submit(self, request: GenerationRequest) -> None:
        """Send a generation job; progress and the result arrive through ``pump``."""
        if self.phase is not Phase.READY:
            raise SessionError("The backend is not connected", "press Start Backend (or Connect) first")
        if self.job is not None:
            raise SessionError("A job is already running", "wait for it or cancel it")
        buffers = []
        if request.image_path:
            try:
                with open(request.image_path, "rb") as f:
                    buffers.append(protocol.Buffer.from_bytes("image", f.read()))
            except OSError as exc:
                raise SessionError(f"Can't read the image {request.image_path}: {exc.strerror or exc}",
                                   "choose a PNG or JPEG file") from None
        ref = next(self._refs)
        header: dict[str, Any] = {"op": "submit", "ref": ref, "pipeline": request.pipeline, "params": request.params}
        if request.text is not None:
            header["text"] = request.text
        self.job = JobState(ref=ref, label=request.label())
        self.last = None
        self._connection.send(header, buffers)

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

    def close(self) -> None:
        """End everything: threads, socket, and the backend if we started it."""
        self._drop_connection()
        self.phase = Phase.OFFLINE

    def threads_alive(self) -> bool:
        return self._connection is not None and self._connection.threads_alive()

    # -- main thread ------------------------------------------------------------------------------

    def pump(self, budget_s: float = 0.002) -> bool:
        """Apply queued events for at most about ``budget_s``; returns whether anything visible changed."""
        changed = self._watch_health()
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
                break  # a mesh was imported: enough work for one tick
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

    def _apply(self, event) -> bool:
        if isinstance(event, Connected):
            self.phase, self.welcome = Phase.READY, event.welcome
            self.request_status()
        elif isinstance(event, (ConnectFailed, Disconnected)):
            self._on_lost(event)
        elif isinstance(event, Received):
            return self._on_message(event.header, event.mesh)
        return False

    def _on_lost(self, event: ConnectFailed | Disconnected) -> None:
        self._drop_connection(shutdown_backend=False)
        self.phase, self.problem, self.unresponsive = Phase.FAILED, Outcome("error", event.message, event.hint), False
        if self.job is not None:
            self._finish_job(Outcome("error", f"The job was lost: {event.message}", event.hint))

    def _on_message(self, header: dict[str, Any], mesh: meshdata.MeshArrays | None) -> bool:
        op, job = header.get("op"), self.job
        if op == "status":
            self.status = header
            return False
        if op == "released":
            self.request_status()
            return False
        if op == "pipelines" and self.welcome is not None:
            self.welcome = {**self.welcome, "pipelines": header.get("pipelines", [])}
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
        elif op == "result" and mesh is not None:
            self.history.appendleft(HistoryEntry(job.label, mesh, header))
            self.job = None
            try:
                name = self._import_result(0)
            except (RuntimeError, MemoryError, ValueError) as exc:  # raising here would stop Blender's timer for good
                self.last = Outcome("error", f"The mesh arrived but could not be imported: {exc}",
                                    "it is kept in History; import it from there")
                return True
            seconds = header.get("timings", {}).get("total", 0.0)
            self.last = Outcome("result", f"{name}: {mesh.vertex_count:,} vertices, {mesh.face_count:,} faces "
                                          f"in {seconds:.1f} s")
            return True
        return False

    def _finish_job(self, outcome: Outcome) -> None:
        self.job, self.last = None, outcome

    def _drop_connection(self, shutdown_backend: bool = True) -> None:
        if self._connection is not None:
            self._connection.close(shutdown_backend=shutdown_backend)
            self._connection = None


def device_summary(status_or_welcome: dict[str, Any]) -> list[str]:
    """Lines for "Test connection": server version, then each device with precision and free memory."""
    lines = []
    server = status_or_welcome.get("server")
    if server:
        lines.append(f"{server.get('name', 'backend')} {server.get('version', '?')} (pid {server.get('pid', '?')})")
    memory = status_or_welcome.get("memory") or {}
    for device in status_or_welcome.get("devices", []):
        parts = [device.get("name") or device.get("kind", "?"), device.get("kind", "")]
        precision = device.get("compute_dtype") or memory.get("compute_dtype") or memory.get("precision")
        if precision:
            parts.append(f"computes in {precision}")
        if device.get("free_bytes"):
            parts.append(f"{device['free_bytes'] / 2**30:.1f} GiB free")
        lines.append(", ".join(p for p in parts if p))
    if memory.get("mode"):
        lines.append(f"memory mode: {memory['mode']}")
    return lines
