"""One connection to the backend on its own threads. No bpy.

A connection thread starts or reaches the backend, shakes hands and then reads messages; a
writer thread sends what the main thread queues, and a ping whenever it has been quiet for
a second. Both only put events on a queue, which ``Session.pump`` drains on Blender's main
thread. Closing never waits on the main thread: it asks a launched backend to shut down and
leaves the rest (waiting for the exit, joining the threads) to a short-lived reaper thread.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import launcher, meshdata
from .backend import protocol
from .errors import AddonError

CLIENT_NAME = "hunyuan3d-blender-addon"
HEARTBEAT_S = 1.0
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 3.0
LOG_LINES_QUOTED = 3
SHUTDOWN_WAIT_S = launcher.SHUTDOWN_WAIT_S + 2 * launcher.STOP_GRACE_S  # the longest the reaper can take
_CLOSE = object()


class HandshakeError(AddonError):
    """The backend answered, but refused the connection or is not our backend."""


PICTURE_PREFIX = "image."  # a result's intermediate pictures


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the backend is: started by us (``launch``) or already running at host:port."""

    launch: launcher.LaunchSettings | None = None
    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""

    def describe(self) -> str:
        return "the bundled backend" if self.launch else f"the backend at {self.host}:{self.port}"


# -- events from the threads --------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    connection: int
    welcome: dict[str, Any]


@dataclass(frozen=True)
class Lost:
    """The connection could not be made, or ended. ``log_lines``: the end of a dead backend's log."""

    connection: int
    message: str
    hint: str
    log_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Received:
    """A message; for a result, its mesh made ready for Blender (or why it could not be read) and its
    intermediate pictures by name (``input``, ``text_image``, ``views``, the texture stage's ``texture_delit``,
    ``texture_view_0``...) as PNG bytes."""

    connection: int
    header: dict[str, Any]
    mesh: meshdata.MeshArrays | None = None
    unreadable: str = ""
    pictures: dict[str, bytes] = field(default_factory=dict)
    lods: tuple[meshdata.MeshArrays, ...] = ()


class Connection:
    """One connection (and, when launching, one backend process) on its own threads."""

    def __init__(self, number: int, settings: ConnectionSettings, events: queue.Queue, after: tuple[Connection, ...] = ()):
        """``after``: closed connections whose backends must have exited before this one launches another."""
        self.number = number
        self.settings = settings
        self.events = events
        self._after = after
        self.backend: launcher.BackendProcess | None = None
        self.last_seen = time.monotonic()
        self._sock: socket.socket | None = None
        self._outbox: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._run, name="hy3d-connection", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="hy3d-writer", daemon=True)
        self._reaper: threading.Thread | None = None

    def start(self) -> None:
        self._reader.start()

    def send(self, header: dict[str, Any], buffers: list[protocol.Buffer] | None = None) -> None:
        self._outbox.put((header, buffers or []))

    def close(self, shutdown_backend: bool = True) -> None:
        """Ask a backend we started to shut down, and end everything else on a reaper thread. Returns at once."""
        with self._lock:
            self._closing.set()
            backend = self.backend
        asked = backend is not None and shutdown_backend and self._writer.is_alive()
        if asked:
            self.send({"op": "shutdown"})
        self._outbox.put(_CLOSE)
        self._reaper = threading.Thread(target=self._reap, args=(backend, asked), name="hy3d-reaper", daemon=True)
        self._reaper.start()

    def wait_closed(self, timeout: float = SHUTDOWN_WAIT_S) -> None:
        """Wait (never on Blender's main thread) until a closed connection's backend has exited and its threads ended."""
        if self._reaper is not None:
            self._reaper.join(timeout)

    def threads_alive(self) -> bool:
        return any(t is not None and t.is_alive() for t in (self._reader, self._writer, self._reaper))

    # -- reaper thread --------------------------------------------------------------------------

    def _reap(self, backend: launcher.BackendProcess | None, asked: bool) -> None:
        if self._writer.is_alive():
            self._writer.join(JOIN_TIMEOUT_S)  # the shutdown request goes out first
        if backend is not None:
            backend.stop(asked_to_shut_down=asked)  # the backend cancels its job, exits and removes its token file
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._reader.is_alive():
            self._reader.join(JOIN_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()

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
        except AddonError as exc:
            self._report(Lost(self.number, exc.message, exc.hint))
        except ConnectionRefusedError:
            s = self.settings
            self._report(Lost(self.number, f"Nothing is listening at {s.host}:{s.port}",
                              f"start it there with: python -m backend serve --port {s.port}, "
                              "or let the add-on launch the bundled backend"))
        except (protocol.ConnectionClosed, protocol.ProtocolError, OSError) as exc:
            self._report(self.lost(str(exc)))

    def _reach_backend(self) -> tuple[str, int, str]:
        s = self.settings
        if s.launch is None:
            return s.host, s.port, s.token
        for earlier in self._after:  # two backends at once could run out of GPU memory
            earlier.wait_closed()
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
            raise HandshakeError(f"The backend refused the connection: {reply.get('message')}", reply.get("hint", ""))
        raise HandshakeError(f"Unexpected reply to hello: {reply.get('op')!r}",
                             "is that port really a Hunyuan3D for Blender backend?")

    def _decode(self, message: protocol.Message) -> Received:
        header = message.header
        if header.get("op") != "result":
            return Received(self.number, header)
        frame = header.get("mesh", {}).get("frame", "y_up")
        arrays = {b.name: b.to_array() for b in message.buffers if b.name.rpartition(".")[2] in ("positions", "faces", "colors", "uvs")}
        try:
            textures = {b.name.removeprefix(protocol.TEXTURE_BUFFER_PREFIX): b.to_bytes() for b in message.buffers
                        if b.name.startswith(protocol.TEXTURE_BUFFER_PREFIX)}
            mesh = meshdata.from_wire(arrays, frame, textures)
            lods = meshdata.lods_from_wire(arrays, len(header.get("lods", [])), frame)
        except (KeyError, ValueError) as exc:
            return Received(self.number, header, unreadable=str(exc))
        pictures = {b.name.removeprefix(PICTURE_PREFIX): b.to_bytes() for b in message.buffers
                    if b.name.startswith(PICTURE_PREFIX)}
        return Received(self.number, header, mesh, lods=lods, pictures=pictures)

    def lost(self, detail: str) -> Lost:
        backend = self.backend
        code = backend.exit_code() if backend is not None else None
        if backend is not None and code is None:
            try:
                code = backend.process.wait(0.5)  # the socket usually closes a moment before the exit status is ready
            except launcher.subprocess.TimeoutExpired:
                code = None
        if code is not None:
            return Lost(self.number, f"The backend stopped (exit code {code})",
                        f"press Restart; the backend log is {backend.log_path}",
                        tuple(launcher.last_lines(backend.log_path, LOG_LINES_QUOTED)))
        return Lost(self.number, f"Lost the connection to {self.settings.describe()} ({detail})",
                    "press Restart to connect again")

    def _report(self, event: Lost) -> None:
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
