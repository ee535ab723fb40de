"""A backend process with the test pipelines, and a plain protocol client, for the server benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend import protocol  # noqa: E402


class Backend:
    def __init__(self, *extra: str):
        self.home = Path(tempfile.mkdtemp(prefix="hy3d-bench-"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), HY3D_HOME=str(self.home))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--device", "cpu", "--pipelines-from", "fixture_pipelines", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        ready = json.loads(self.proc.stdout.readline())
        self.port = ready["port"]
        self.token = Path(ready["token_file"]).read_text().strip()

    def connect(self, hello: bool = True, timeout: float = 5.0) -> Connection:
        conn = Connection(self.port, timeout)
        if hello:
            conn.send({"op": "hello", "protocol": protocol.PROTOCOL_VERSION, "token": self.token})
            welcome = conn.read()
            assert welcome.op == "welcome", welcome.header
        return conn

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Connection:
    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = protocol.Reader(self.sock)

    def send(self, header: dict, buffers=()) -> None:
        protocol.send(self.sock, header, buffers)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> protocol.Message:
        return self.reader.read()

    def close(self) -> None:
        self.sock.close()
