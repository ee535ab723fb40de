"""Shared fixtures: a real backend process on loopback, and a protocol client for it."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend import protocol

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FATAL_CODES = {"frame_too_large", "bad_frame", "handshake_required", "unauthorized", "protocol_mismatch"}


def backend_env(home: Path, extra_pythonpath: list[Path] = ()) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(p) for p in extra_pythonpath] + [str(REPO), str(TESTS)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["HY3D_HOME"] = str(home)
    env["HF_HOME"] = str(home / "hf")  # an empty Hugging Face cache: tests never see weights the machine may have
    env["PYTHONUNBUFFERED"] = "1"
    return env


class BackendProcess:
    """``python -m backend serve`` with the test pipelines, started and read like the add-on does."""

    def __init__(self, home: Path, *extra: str, extra_pythonpath: list[Path] = ()):
        self.home = home
        self.output_dir = home / "outputs"
        self.log = home / "backend.log"  # a file, not a pipe: a pipe nobody reads would block the backend
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--pipelines-from", "fixture_pipelines",
             "--output-dir", str(self.output_dir), *extra],
            stdout=subprocess.PIPE, stderr=self._log_file, env=backend_env(home, extra_pythonpath), text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError("backend exited before it was ready: " + self.log.read_text())
        self.ready = json.loads(line)
        self.port = self.ready["port"]
        self.token = Path(self.ready["token_file"]).read_text().strip()

    def client(self, hello: bool = True) -> Client:
        client = Client(self.port)
        if hello:
            welcome = client.hello(self.token)
            assert welcome["op"] == "welcome", welcome
        return client

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self._log_file.close()


class Client:
    def __init__(self, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = protocol.Reader(self.sock)
        self.pending: list[protocol.Message] = []  # events that arrived while waiting for a reply
        self.refs = itertools.count(1)

    def send(self, header: dict, buffers=()) -> None:
        protocol.send(self.sock, header, buffers)

    def read(self) -> protocol.Message:
        if self.pending:
            return self.pending.pop(0)
        return self.reader.read()

    def hello(self, token: str, version: int = protocol.PROTOCOL_VERSION) -> dict:
        self.send({"op": "hello", "protocol": version, "token": token, "client": "tests"})
        return self.read().header

    def request(self, header: dict, buffers=()) -> protocol.Message:
        """Send and return the direct reply (matched by ``ref``), keeping other events for ``read``."""
        ref = header.get("ref", f"r{next(self.refs)}")
        self.send({**header, "ref": ref}, buffers)
        while True:
            message = self.reader.read()
            if message.header.get("ref") == ref or message.header.get("code") in FATAL_CODES:
                if "ref" not in header:
                    message.header.pop("ref", None)
                return message
            self.pending.append(message)

    def until_done(self, job: str | None = None) -> tuple[protocol.Message, list[protocol.Message]]:
        """Read events until a job ends; returns the closing message and everything before it."""
        seen = []
        while True:
            message = self.read()
            if message.op in ("result", "cancelled", "error") and (job is None or message.header.get("job") == job):
                return message, seen
            seen.append(message)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def backend(tmp_path):
    process = BackendProcess(tmp_path)
    yield process
    process.stop()


def icosphere_mesh():
    from fixture_pipelines import icosphere

    from backend.mesh import Mesh

    positions, faces = icosphere(2, 0.5)
    return Mesh(positions, faces, colors=(positions + 0.5))
