import json
import socket
import struct
import threading

import numpy as np
import pytest

from backend import protocol
from backend.protocol import Buffer, ErrorCode, ProtocolError


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def send_raw(sock, data: bytes) -> None:
    def send() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the reader may refuse the frame and close before every byte is sent

    threading.Thread(target=send, daemon=True).start()


def frame(header: dict | bytes) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("dtype", sorted(protocol.DTYPE_ITEMSIZE))
def test_round_trip_every_dtype(pair, dtype):
    a, b = pair
    rng = np.random.default_rng(0)
    array = (rng.random((7, 3)) * 100).astype(np.dtype(dtype))
    empty = np.zeros((0, 3), dtype=np.dtype(dtype))
    header = {"op": "result", "job": "j1", "text": "ünïcode"}
    sender = threading.Thread(target=protocol.send, args=(a, header, [Buffer.from_array("a", array), Buffer.from_array("e", empty)]))
    sender.start()
    message = protocol.Reader(b).read()
    sender.join(5)
    assert message.header == header
    assert [buf.name for buf in message.buffers] == ["a", "e"]
    got = message.buffer("a").to_array()
    assert got.dtype == np.dtype(dtype) and got.shape == (7, 3)
    np.testing.assert_array_equal(got, array)
    assert message.buffer("e").to_array().shape == (0, 3)


def test_big_endian_arrays_travel_as_little_endian(pair):
    a, b = pair
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    protocol.send(a, {"op": "x"}, [Buffer.from_array("v", array)])
    buf = protocol.Reader(b).read().buffer("v")
    assert buf.dtype == "<f4"
    np.testing.assert_array_equal(buf.to_array(), array)


def test_encoded_image_bytes_round_trip(pair):
    a, b = pair
    data = bytes(range(256)) * 3
    protocol.send(a, {"op": "submit"}, [Buffer.from_bytes("image", data)])
    assert protocol.Reader(b).read().buffer("image").to_bytes() == data


def read_error(pair, data: bytes, max_buffer_bytes=protocol.DEFAULT_MAX_BUFFER_BYTES) -> ProtocolError:
    a, b = pair
    send_raw(a, data)
    with pytest.raises(ProtocolError) as info:
        protocol.Reader(b, max_buffer_bytes).read()
    return info.value


@pytest.mark.parametrize(
    "data, code, fatal",
    [
        (struct.pack(">I", 0), ErrorCode.BAD_FRAME, True),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.FRAME_TOO_LARGE, True),
        (struct.pack(">I", protocol.MAX_HEADER_BYTES + 1), ErrorCode.FRAME_TOO_LARGE, True),
        (frame(b"\xff\xfe not utf8"), ErrorCode.BAD_JSON, False),
        (frame(b"{not json"), ErrorCode.BAD_JSON, False),
        (frame(b"[1, 2]"), ErrorCode.BAD_JSON, False),
        (frame({"op": "x", "buffers": "nope"}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [1]}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [{"name": "a", "dtype": ">f4", "shape": [1], "nbytes": 4}]}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [{"name": "a", "dtype": "<f4", "shape": [2], "nbytes": 4}]}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [{"name": "a", "dtype": "<f4", "shape": [-1], "nbytes": 4}]}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [{"name": "a", "dtype": "|u1", "shape": [1], "nbytes": 1}] * 2}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [{"name": "", "dtype": "|u1", "shape": [1], "nbytes": 1}]}), ErrorCode.BAD_FRAME, True),
        (frame({"op": "x", "buffers": [{"name": "a", "dtype": "|u1", "shape": [1], "nbytes": True}]}), ErrorCode.BAD_FRAME, True),
    ],
)
def test_framing_errors(pair, data, code, fatal):
    error = read_error(pair, data)
    assert error.code == code
    assert error.fatal == fatal
    assert error.message


def test_buffer_total_limit_is_checked_before_reading(pair):
    header = {"op": "x", "buffers": [{"name": "a", "dtype": "|u1", "shape": [100], "nbytes": 100}]}
    error = read_error(pair, frame(header), max_buffer_bytes=99)
    assert error.code == ErrorCode.FRAME_TOO_LARGE and error.fatal


def test_too_many_buffers(pair):
    table = [{"name": f"b{i}", "dtype": "|u1", "shape": [0], "nbytes": 0} for i in range(protocol.MAX_BUFFERS + 1)]
    assert read_error(pair, frame({"op": "x", "buffers": table})).code == ErrorCode.FRAME_TOO_LARGE


def test_peer_closing_mid_message_is_reported(pair):
    a, b = pair
    a.sendall(struct.pack(">I", 50) + b'{"op":')
    a.close()
    with pytest.raises(protocol.ConnectionClosed, match="mid-message"):
        protocol.Reader(b).read()


def test_clean_close_between_messages(pair):
    a, b = pair
    a.close()
    with pytest.raises(protocol.ConnectionClosed):
        protocol.Reader(b).read()


@pytest.mark.parametrize(
    "header, code",
    [
        ({}, ErrorCode.BAD_MESSAGE),
        ({"op": 3}, ErrorCode.BAD_MESSAGE),
        ({"op": "explode"}, ErrorCode.UNKNOWN_OP),
        ({"op": "hello", "token": "t"}, ErrorCode.BAD_MESSAGE),
        ({"op": "hello", "protocol": "1", "token": "t"}, ErrorCode.BAD_MESSAGE),
        ({"op": "hello", "protocol": True, "token": "t"}, ErrorCode.BAD_MESSAGE),
        ({"op": "submit"}, ErrorCode.BAD_MESSAGE),
        ({"op": "submit", "pipeline": "p", "params": []}, ErrorCode.BAD_MESSAGE),
        ({"op": "cancel", "job": 5}, ErrorCode.BAD_MESSAGE),
        ({"op": "ping", "ref": [1]}, ErrorCode.BAD_MESSAGE),
    ],
)
def test_message_validation(header, code):
    with pytest.raises(ProtocolError) as info:
        protocol.validate_request(header)
    assert info.value.code == code and not info.value.fatal


def test_valid_messages_pass():
    assert protocol.validate_request({"op": "hello", "protocol": 1, "token": "t", "ref": 7}) == "hello"
    assert protocol.validate_request({"op": "submit", "pipeline": "p", "params": {"steps": 3}, "text": "a cat"}) == "submit"


def test_encode_rejects_header_over_limit():
    with pytest.raises(ProtocolError) as info:
        protocol.encode({"op": "x", "blob": "a" * protocol.MAX_HEADER_BYTES})
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_encode_rejects_inconsistent_buffer():
    with pytest.raises(ValueError):
        protocol.encode({"op": "x"}, [Buffer("a", "<f4", (3,), b"\0" * 4)])
