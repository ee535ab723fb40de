"""The socket server: handshake, one reader and one writer thread per client, dispatch to the job engine.

Control messages (ping, status, cancel) are answered on the client's own reader thread, so they
stay fast while the worker is busy with a job.
"""

from __future__ import annotations

import hmac
import itertools
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import SERVER_NAME, __version__
from .errors import BackendError
from .jobs import JobEngine
from .mesh.inputs import mesh_from_buffers
from .pipelines.base import JobRequest
from .protocol import (
    DEFAULT_MAX_BUFFER_BYTES,
    MESH_FACES_BUFFER,
    MESH_POSITIONS_BUFFER,
    PROTOCOL_VERSION,
    Buffer,
    ConnectionClosed,
    ErrorCode,
    Message,
    ProtocolError,
    Reader,
    error_header,
    send,
    validate_request,
)

HANDSHAKE_TIMEOUT_S = 10.0
CLIENT_FLUSH_WAIT_S = 5.0
JOBS_END_WAIT_S = 120.0  # a cancelled job stops at its next step; a step of the largest models can take this long
ACCEPT_POLL_S = 0.2
_CLOSE = object()


def _handshake_required() -> dict[str, Any]:
    return error_header(ErrorCode.HANDSHAKE_REQUIRED, "the first message must be 'hello' with the token",
                        hint=f'send {{"op": "hello", "protocol": {PROTOCOL_VERSION}, "token": ...}} first (docs/protocol.md)')


class ClientSession:
    """One connected client. Its writer thread drains an outgoing queue, so senders never block."""

    _ids = itertools.count(1)

    def __init__(self, server: Server, conn: socket.socket, address: Any):
        self.server = server
        self.conn = conn
        self.address = address
        self.id = next(self._ids)
        self.authenticated = False
        self.outbox: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"client-{self.id}", daemon=True)
        self._login_deadline = threading.Timer(HANDSHAKE_TIMEOUT_S, self._end_unfinished_login)
        self._login_deadline.daemon = True

    # -- sending ----------------------------------------------------------------------------

    def send(self, header: dict[str, Any], buffers: list[Buffer] | None = None) -> None:
        if not self.closed.is_set():
            self.outbox.put((header, buffers or []))

    def _write_loop(self) -> None:
        try:
            while True:
                item = self.outbox.get()
                if item is _CLOSE:
                    break
                send(self.conn, *item)
        except OSError:
            pass
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        self.closed.set()
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()

    # -- receiving --------------------------------------------------------------------------

    def run(self) -> None:
        writer = threading.Thread(target=self._write_loop, name=f"client-{self.id}-writer", daemon=True)
        writer.start()
        reader = Reader(self.conn, self.server.max_buffer_bytes)
        # The login deadline covers the whole login, however slowly its bytes arrive.
        self._login_deadline.start()
        try:
            while not self.closed.is_set():
                try:
                    message = reader.read()
                except ProtocolError as exc:
                    if exc.fatal or self.authenticated:
                        self.send(exc.to_header())
                    else:
                        self.send(_handshake_required())
                    if exc.fatal or not self.authenticated:
                        break  # before the handshake, anything that isn't our protocol costs the connection
                    continue
                if not self.handle(message):
                    break
        except (ConnectionClosed, OSError):
            pass  # peer went away or the login deadline passed
        finally:
            self._login_deadline.cancel()
            self.server.engine.drop_owner(self)
            self.outbox.put(_CLOSE)
            writer.join(timeout=5)
            self.server.forget(self)

    def handle(self, message: Message) -> bool:
        """Dispatch one message; returns False when the connection must close."""
        header = message.header
        ref = {"ref": header["ref"]} if isinstance(header.get("ref"), (str, int)) else {}
        if not self.authenticated:
            return self._handshake(header, ref)
        try:
            op = validate_request(header)
            if op == "hello":
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "already authenticated")
            if op == "ping":
                self.send({"op": "pong", "time": time.time(), **ref})
            elif op == "status":
                self.send({"op": "status", **self.server.status(), **ref})
            elif op == "pipelines":
                self.send({"op": "pipelines", "pipelines": self.server.refresh_pipelines(), **ref})
            elif op == "release":
                self.server.engine.request_release(lambda freed: self._released(freed, ref))
            elif op == "submit":
                self._submit(header, message, ref)
            elif op == "plan":
                self.send({"op": "plan", **self.server.engine.plan(_plan_request(header)), **ref})
            elif op == "cancel":
                if not self.server.engine.cancel(header["job"], owner=self):
                    raise BackendError(ErrorCode.UNKNOWN_JOB, f"no queued or running job {header['job']!r} of yours")
            elif op == "shutdown":
                self.server.finish_jobs()  # each accepted job's last event is queued before the bye
                self.send({"op": "bye", **ref})
                self.server.request_shutdown()
                return False
        except ProtocolError as exc:
            self.send({**exc.to_header(), **ref})
            return self.authenticated and not exc.fatal
        except BackendError as exc:
            self.send({**error_header(exc.code, exc.message, exc.hint), **ref})
        except Exception as exc:  # noqa: BLE001 - a bug answering one message must not cost the client its connection or job
            traceback.print_exc(file=sys.stderr)
            self.send({**error_header(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}",
                                      "the backend log has the details; the connection stays open"), **ref})
        return True

    def _released(self, freed: dict[str, Any], ref: dict[str, Any]) -> None:
        if "error" in freed:
            self.send({**error_header(ErrorCode.INTERNAL, f"releasing memory failed: {freed['error']}",
                                      "the backend log has the details"), **ref})
        else:
            self.send({"op": "released", **freed, **ref})

    def _handshake(self, header: dict[str, Any], ref: dict[str, Any]) -> bool:
        if header.get("op") != "hello":
            self.send({**_handshake_required(), **ref})
            return False
        token = header.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"), self.server.token.encode("utf-8")):
            self.server.note_auth_failure()
            self.send(error_header(ErrorCode.UNAUTHORIZED, "wrong token" if isinstance(token, str) else "hello needs the token",
                                   hint="read the token from the file named in the backend's ready line", **ref))
            return False
        if header.get("protocol") != PROTOCOL_VERSION or isinstance(header.get("protocol"), bool):
            self.send(error_header(
                ErrorCode.PROTOCOL_MISMATCH,
                f"this backend speaks protocol {PROTOCOL_VERSION}, the client speaks {header.get('protocol')!r}",
                hint="update the add-on and the backend together (one zip carries both)", **ref))
            return False
        self.authenticated = True
        self._login_deadline.cancel()
        self.send({"op": "welcome", "protocol": PROTOCOL_VERSION, **self.server.identity(), **ref})
        return True

    def _end_unfinished_login(self) -> None:
        if not self.authenticated:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _submit(self, header: dict[str, Any], message: Message, ref: dict[str, Any]) -> None:
        buffers = {buf.name: buf for buf in message.buffers}
        mesh = mesh_from_buffers(buffers)
        images = {}
        for buf in message.buffers:
            if buf.name in (MESH_POSITIONS_BUFFER, MESH_FACES_BUFFER):
                continue
            if buf.dtype != "|u1" or len(buf.shape) != 1:
                raise BackendError(ErrorCode.BAD_INPUT, f"input {buf.name!r} must be encoded image bytes (dtype |u1, 1-D)",
                                   hint="send the PNG or JPEG file's bytes as they are")
            images[buf.name] = buf.to_bytes()
        request = JobRequest(pipeline=header["pipeline"], params=header.get("params", {}), text=header.get("text"), images=images, mesh=mesh,
                             lods=header.get("lods", 0))

        def sink(event: dict[str, Any], buffers: list[Buffer]) -> None:
            if event.get("op") == "accepted":
                event = {**event, **ref}
            self.send(event, buffers)

        self.server.engine.submit(request, owner=self, sink=sink)


def _plan_request(header: dict[str, Any]) -> JobRequest:
    """A ``plan`` names the pictures the job will take (``inputs``) instead of sending them."""
    inputs = header.get("inputs", [])
    if not all(isinstance(name, str) and name for name in inputs):
        raise BackendError(ErrorCode.BAD_MESSAGE, "plan: 'inputs' must be a list of input names, e.g. [\"image\"]",
                           hint="name the pictures the job will send (the pipeline's inputs); a prompt goes in 'text'")
    return JobRequest(pipeline=header["pipeline"], params=header.get("params", {}), text=header.get("text"),
                      images=dict.fromkeys(inputs))


class Server:
    """Listens, authenticates and serves clients until shut down.

    Args:
        engine: the job engine (already holding the runtime).
        token: the shared secret every client must present in ``hello``.
        identity: what ``welcome`` says besides the server itself (devices, pipelines).
        host/port: where to listen; port 0 lets the OS pick.
        catalogue: lists the pipelines with a fresh look at their weights, for the ``pipelines``
            op (weights downloaded or copied in since the start); None keeps the start's list.
    """

    def __init__(self, engine: JobEngine, token: str, identity: dict[str, Any], host: str = "127.0.0.1", port: int = 0,
                 max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES, catalogue: Callable[[], list[dict[str, Any]]] | None = None):
        self.engine = engine
        self.token = token
        self._identity = identity
        self._catalogue = catalogue
        self.max_buffer_bytes = max_buffer_bytes
        self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self.sock.getsockname()[1]
        self._clients: set[ClientSession] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._auth_failures: list[float] = []

    def identity(self) -> dict[str, Any]:
        return {"server": {"name": SERVER_NAME, "version": __version__, "pid": os.getpid()}, **self._identity}

    def refresh_pipelines(self) -> list[dict[str, Any]]:
        """The pipelines and their weights as they are now; later welcomes say the same."""
        if self._catalogue is None:
            return self._identity.get("pipelines", [])
        pipelines = self._catalogue()
        self._identity = {**self._identity, "pipelines": pipelines}
        return pipelines

    def status(self) -> dict[str, Any]:
        runtime = self.engine.runtime
        return {**self.engine.status(), "devices": self._identity.get("devices", []),
                "memory": runtime.status() if runtime is not None else None, "clients": len(self._clients)}

    def note_auth_failure(self) -> None:
        """Slow down token guessing: after repeated failures each new failure costs a second."""
        now = time.monotonic()
        with self._lock:
            self._auth_failures = [t for t in self._auth_failures if now - t < 60] + [now]
            penalty = len(self._auth_failures) > 5
        if penalty:
            time.sleep(1.0)

    def forget(self, client: ClientSession) -> None:
        with self._lock:
            self._clients.discard(client)

    def request_shutdown(self) -> None:
        self._stop.set()

    def finish_jobs(self) -> None:
        """Refuse new jobs, cancel the queued and running ones and wait until each has sent its last event."""
        self.engine.stop()
        if not self.engine.join(JOBS_END_WAIT_S):
            print(f"the running job did not stop within {JOBS_END_WAIT_S:.0f} s of being cancelled", file=sys.stderr, flush=True)

    def watch_parent(self, pid: int, interval: float = 1.0) -> None:
        """Shut down once process ``pid`` is gone (Blender quit or crashed)."""

        def watch() -> None:
            while not self._stop.wait(interval):
                if not pid_alive(pid):
                    print(f"parent process {pid} is gone; shutting down", file=sys.stderr, flush=True)
                    self.request_shutdown()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()

    def serve_forever(self) -> None:
        self.engine.start()
        self.sock.settimeout(ACCEPT_POLL_S)  # accept() must notice a shutdown asked from another thread
        try:
            while not self._stop.is_set():
                try:
                    conn, address = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client = ClientSession(self, conn, address)
                with self._lock:
                    self._clients.add(client)
                client.thread.start()
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self.finish_jobs()  # a job left running while the interpreter exits would abort the process
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.outbox.put(_CLOSE)
        for client in clients:  # their last events (a job's end, bye) are written before the process exits
            client.thread.join(CLIENT_FLUSH_WAIT_S)
        try:
            self.sock.close()
        except OSError:
            pass


def pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
