"""Wire protocol shared by the backend and the Blender add-on.

Standard library only: the add-on imports this very file (bundled next to it by build.py),
so the two sides can never drift apart. docs/protocol.md is the specification.

A message is a 4-byte unsigned big-endian length N, then N bytes of UTF-8 JSON (the header,
always an object). If the header lists ``buffers``, their raw bytes follow in order.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_BUFFER_BYTES = 1 << 30
MAX_BUFFERS = 64
MAX_LODS = 8  # a submit's ``lods``: decimated copies sent with the result

_LENGTH = struct.Struct(">I")

# Buffer names with a meaning of their own (docs/protocol.md): a mesh input of ``submit``, and the
# textures of a ``result`` (``texture.base_color``: PNG bytes).
MESH_POSITIONS_BUFFER = "mesh.positions"
MESH_FACES_BUFFER = "mesh.faces"
TEXTURE_BUFFER_PREFIX = "texture."

# numpy-style dtype strings and their item sizes; only little-endian or byte-sized types.
DTYPE_ITEMSIZE = {
    "|u1": 1, "|i1": 1, "|b1": 1,
    "<u2": 2, "<i2": 2, "<f2": 2,
    "<u4": 4, "<i4": 4, "<f4": 4,
    "<u8": 8, "<i8": 8, "<f8": 8,
}


class ErrorCode:
    """Stable error codes; clients branch on these, humans read the message."""

    BAD_FRAME = "bad_frame"  # length prefix or buffer table is inconsistent
    FRAME_TOO_LARGE = "frame_too_large"  # header or buffers exceed the limits
    BAD_JSON = "bad_json"  # header is not UTF-8 JSON object
    BAD_MESSAGE = "bad_message"  # fields missing or of the wrong type
    UNKNOWN_OP = "unknown_op"
    UNAUTHORIZED = "unauthorized"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    HANDSHAKE_REQUIRED = "handshake_required"
    UNKNOWN_PIPELINE = "unknown_pipeline"
    BAD_PARAMETER = "bad_parameter"
    BAD_INPUT = "bad_input"
    UNKNOWN_JOB = "unknown_job"
    BUSY = "busy"
    WEIGHTS_MISSING = "weights_missing"
    WEIGHTS_CORRUPT = "weights_corrupt"  # present but truncated, damaged or of the wrong layout
    OUT_OF_MEMORY = "out_of_memory"
    JOB_FAILED = "job_failed"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A message could not be accepted.

    ``fatal`` means the stream can no longer be trusted (framing is lost), so the
    connection must close after the error reply.
    """

    def __init__(self, code: str, message: str, hint: str = "", fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.fatal = fatal

    def to_header(self, job: str | None = None) -> dict[str, Any]:
        return error_header(self.code, self.message, self.hint, job=job)


class ConnectionClosed(Exception):
    """The peer closed the connection (cleanly between messages, or mid-message)."""


@dataclass
class Buffer:
    """A named raw array travelling after the header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes}

    @classmethod
    def from_array(cls, name: str, array: Any) -> Buffer:
        """Wrap a numpy array (converted to little-endian, C-contiguous) without copying when possible."""
        import numpy as np

        arr = np.asarray(array, order="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = arr.dtype.str
        if dtype not in DTYPE_ITEMSIZE:
            raise ValueError(f"buffer {name!r}: dtype {dtype} cannot travel on the wire")
        return cls(name, dtype, tuple(int(s) for s in arr.shape), memoryview(arr.reshape(-1).view(np.uint8)))

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Buffer:
        """An opaque byte string, for example an encoded PNG."""
        return cls(name, "|u1", (len(data),), data)

    def to_array(self) -> Any:
        import numpy as np

        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)

    def to_bytes(self) -> bytes:
        return bytes(self.data)


@dataclass
class Message:
    header: dict[str, Any]
    buffers: list[Buffer] = field(default_factory=list)

    @property
    def op(self) -> str:
        return self.header.get("op", "")

    def buffer(self, name: str) -> Buffer | None:
        for buf in self.buffers:
            if buf.name == name:
                return buf
        return None


def error_header(code: str, message: str, hint: str = "", job: str | None = None, **extra: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"op": "error", "code": code, "message": message, "hint": hint}
    if job is not None:
        header["job"] = job
    header.update(extra)
    return header


# ---------------------------------------------------------------------------------------------
# Encoding


def encode(header: dict[str, Any], buffers: Sequence[Buffer] = ()) -> list[bytes | memoryview]:
    """Serialise a message into the chunks to send, header first. Buffers are not copied."""
    if buffers:
        header = dict(header, buffers=[b.describe() for b in buffers])
    payload = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(payload) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"header of {len(payload)} bytes exceeds {MAX_HEADER_BYTES}")
    chunks: list[bytes | memoryview] = [_LENGTH.pack(len(payload)) + payload]
    for buf in buffers:
        if len(buf.data) != _expected_nbytes(buf.dtype, buf.shape):
            raise ValueError(f"buffer {buf.name!r}: {len(buf.data)} bytes do not match {buf.dtype} {buf.shape}")
        if len(buf.data):  # an empty buffer is all header: nothing to send (or to wait for)
            chunks.append(memoryview(buf.data).cast("B") if not isinstance(buf.data, bytes) else buf.data)
    return chunks


def send(sock: socket.socket, header: dict[str, Any], buffers: Sequence[Buffer] = ()) -> None:
    """Send one message. Callers sharing a socket between threads must hold a lock."""
    for chunk in encode(header, buffers):
        sock.sendall(chunk)


# ---------------------------------------------------------------------------------------------
# Decoding


class Reader:
    """Reads whole messages from a socket, enforcing the limits before allocating."""

    def __init__(self, sock: socket.socket, max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES):
        self.sock = sock
        self.max_buffer_bytes = max_buffer_bytes

    def _read_exact(self, n: int, *, at_boundary: bool = False) -> bytearray:
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                if at_boundary and got == 0:
                    raise ConnectionClosed("peer closed the connection")
                raise ConnectionClosed(f"peer closed the connection mid-message ({got} of {n} bytes)")
            got += k
        return out

    def read(self) -> Message:
        (length,) = _LENGTH.unpack(self._read_exact(4, at_boundary=True))
        if length == 0:
            raise ProtocolError(ErrorCode.BAD_FRAME, "empty header", fatal=True)
        if length > MAX_HEADER_BYTES:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit",
                hint="this port speaks the Hunyuan3D for Blender protocol (docs/protocol.md), not HTTP",
                fatal=True,
            )
        header = decode_header(bytes(self._read_exact(length)))
        table = parse_buffer_table(header, self.max_buffer_bytes)
        buffers = [Buffer(name, dtype, shape, self._read_exact(nbytes)) for name, dtype, shape, nbytes in table]
        header.pop("buffers", None)
        return Message(header, buffers)


def decode_header(raw: bytes) -> dict[str, Any]:
    # The framing is intact here, so JSON errors do not cost the connection.
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"header must be a JSON object, got {type(header).__name__}")
    return header


def parse_buffer_table(header: dict[str, Any], max_total: int) -> list[tuple[str, str, tuple[int, ...], int]]:
    """Validate the ``buffers`` table. Errors here are fatal: the byte stream can't be resynchronised."""
    table = header.get("buffers", [])
    if not isinstance(table, list):
        raise ProtocolError(ErrorCode.BAD_FRAME, "'buffers' must be a list", fatal=True)
    if len(table) > MAX_BUFFERS:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"{len(table)} buffers exceed the limit of {MAX_BUFFERS}", fatal=True)
    parsed = []
    total = 0
    names = set()
    for i, entry in enumerate(table):
        if not isinstance(entry, dict):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"buffers[{i}] must be an object", fatal=True)
        name, dtype, shape, nbytes = (entry.get(k) for k in ("name", "dtype", "shape", "nbytes"))
        if not isinstance(name, str) or not name or name in names:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"buffers[{i}] needs a unique non-empty string 'name'", fatal=True)
        names.add(name)
        if dtype not in DTYPE_ITEMSIZE:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"buffer {name!r}: unsupported dtype {dtype!r}",
                hint="use one of " + ", ".join(sorted(DTYPE_ITEMSIZE)),
                fatal=True,
            )
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"buffer {name!r}: 'shape' must be a list of non-negative integers", fatal=True)
        if not _is_int(nbytes) or nbytes < 0:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"buffer {name!r}: 'nbytes' must be a non-negative integer", fatal=True)
        total += nbytes
        if total > max_total:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"buffers total more than the {max_total}-byte limit",
                hint="send smaller inputs, or start the backend with a larger --max-buffer-bytes",
                fatal=True,
            )
        if nbytes != _expected_nbytes(dtype, tuple(shape)):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"buffer {name!r}: nbytes {nbytes} does not match {dtype} {shape}", fatal=True)
        parsed.append((name, dtype, tuple(shape), nbytes))
    return parsed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected_nbytes(dtype: str, shape: Iterable[int]) -> int:
    n = DTYPE_ITEMSIZE[dtype]
    for s in shape:
        n *= s
    return n


# ---------------------------------------------------------------------------------------------
# Message schemas

# Field type checks for each client op: name -> (accepted types, required).
_STR, _INT, _DICT, _LIST = (str,), (int,), (dict,), (list,)
CLIENT_OPS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hello": {"protocol": (_INT, True), "token": (_STR, True), "client": (_STR, False)},
    "ping": {},
    "submit": {"pipeline": (_STR, True), "params": (_DICT, False), "text": (_STR, False), "lods": (_INT, False)},
    "plan": {"pipeline": (_STR, True), "params": (_DICT, False), "text": (_STR, False), "inputs": (_LIST, False)},
    "cancel": {"job": (_STR, True)},
    "status": {},
    "pipelines": {},
    "release": {},
    "shutdown": {},
}
COMMON_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {"op": (_STR, True), "ref": (_STR + _INT, False)}

SERVER_EVENTS = ("welcome", "pong", "accepted", "progress", "result", "cancelled", "error", "status", "pipelines", "released", "plan",
                 "bye")


def validate_request(header: dict[str, Any]) -> str:
    """Check a client message against its schema and return its op."""
    op = header.get("op")
    if not isinstance(op, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "every message needs a string 'op'")
    schema = CLIENT_OPS.get(op)
    if schema is None:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", hint="known ops: " + ", ".join(CLIENT_OPS))
    for name, (types, required) in {**COMMON_FIELDS, **schema}.items():
        if name not in header:
            if required:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{op}: missing field {name!r}")
            continue
        value = header[name]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{op}: field {name!r} must be {wanted}, got {type(value).__name__}")
    return op
