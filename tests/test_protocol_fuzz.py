"""Property tests: whatever bytes arrive, the reader and the validator answer with a ProtocolError or a message."""

import json
import socket
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import protocol
from backend.protocol import Buffer, ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(st.sampled_from(["op", "token", "protocol", "job", "pipeline", "params", "text", "ref", "buffers", "x"]),
                          json_values, max_size=6)
quick = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_bytes(data: bytes):
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        return protocol.Reader(b, max_buffer_bytes=1 << 16).read()
    finally:
        a.close()
        b.close()


@quick
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data):
    try:
        read_bytes(data)
    except (ProtocolError, protocol.ConnectionClosed):
        pass


@quick
@given(headers)
def test_any_header_is_validated_or_refused(header):
    body = json.dumps(header).encode()
    try:
        message = read_bytes(struct.pack(">I", len(body)) + body)
    except ProtocolError as exc:
        assert exc.code in ("bad_frame", "frame_too_large")
        return
    except protocol.ConnectionClosed:
        return  # the buffer table announced bytes that never came
    try:
        op = protocol.validate_request(message.header)
    except ProtocolError as exc:
        assert exc.message and not exc.fatal
    else:
        assert op in protocol.CLIENT_OPS


@quick
@given(st.sampled_from(sorted(protocol.DTYPE_ITEMSIZE)), st.lists(st.integers(0, 5), min_size=0, max_size=3), st.integers(0, 2**31))
def test_any_array_round_trips(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 100).astype(np.dtype(dtype))
    a, b = socket.socketpair()
    try:
        protocol.send(a, {"op": "x"}, [Buffer.from_array("v", array)])
        got = protocol.Reader(b).read().buffer("v").to_array()
    finally:
        a.close()
        b.close()
    assert got.shape == array.shape and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)
