"""Fuzz a live backend with random and mutated frames; report crashes, hangs, unstructured replies, memory.

Three kinds of frames, mixed at random from a fixed seed:
- raw: random bytes on a fresh, unauthenticated connection (what a port scanner or a browser sends);
- header: a valid frame whose JSON header was mutated (fields dropped, retyped, ops invented,
  bytes flipped), sent on an authenticated connection;
- framing: a frame whose length prefix or buffer table lies, on an authenticated connection.
Every reply must be a structured message (an ``error`` with a code and a message, or a normal
reply); the server must answer within the timeout, stay alive, and its memory must stay flat.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time

import psutil
from server_harness import Backend

from backend import protocol

BASE_MESSAGES = [
    {"op": "ping"},
    {"op": "status"},
    {"op": "pipelines"},
    {"op": "cancel", "job": "j1"},
    {"op": "submit", "pipeline": "no-such-pipeline", "params": {"steps": 1}, "text": "x"},
    {"op": "submit", "pipeline": "test-shape", "params": {"steps": "one"}, "text": "x"},
    {"op": "hello", "protocol": 1, "token": "x"},
]
ODD_VALUES = [None, True, -1, 2**63, 1.5, "", "x" * 300, [], {}, [1, "a"], {"op": "ping"}, "\u0000", "é"]


def mutate_header(rng: random.Random) -> bytes:
    header = json.loads(json.dumps(rng.choice(BASE_MESSAGES)))
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        keys = list(header)
        if action < 0.25 and keys:
            header.pop(rng.choice(keys))
        elif action < 0.55 and keys:
            header[rng.choice(keys)] = rng.choice(ODD_VALUES)
        elif action < 0.7:
            header["op"] = rng.choice(["", "PING", "submit ", "shutdown!", "__init__", "status"])
        elif action < 0.85:
            header[rng.choice(["params", "ref", "buffers", "text", "pipeline"])] = rng.choice(ODD_VALUES)
        else:
            header = rng.choice([[], 3, "string", None])
            break
    raw = bytearray(json.dumps(header).encode())
    if rng.random() < 0.3 and raw:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    return struct.pack(">I", len(raw)) + bytes(raw) if raw else struct.pack(">I", 0)


def broken_framing(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return struct.pack(">I", rng.choice([protocol.MAX_HEADER_BYTES + 1, 2**32 - 1, 0]))
    if choice == 1:
        table = [{"name": "a", "dtype": rng.choice(["<f4", ">f4", "x", 3]), "shape": [rng.randint(-2, 4)], "nbytes": rng.randint(-1, 20)}]
    elif choice == 2:
        table = [{"name": "a", "dtype": "|u1", "shape": [2**40], "nbytes": 2**40}]
    else:
        table = rng.choice([{}, "x", [None], [{"name": ""}]])
    header = {"op": "ping", "buffers": table}
    body = json.dumps(header).encode()
    try:
        announced = sum(entry[3] for entry in protocol.parse_buffer_table(header, protocol.DEFAULT_MAX_BUFFER_BYTES))
    except protocol.ProtocolError:
        announced = 0  # the server refuses the table before reading any buffer bytes
    # A table that happens to be valid gets its bytes, so only the server's own behaviour can cause a hang.
    return struct.pack(">I", len(body)) + body + bytes(announced)


def structured(message: protocol.Message) -> bool:
    header = message.header
    if header.get("op") == "error":
        return isinstance(header.get("code"), str) and isinstance(header.get("message"), str)
    return header.get("op") in protocol.SERVER_EVENTS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000, help="frames to send (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a reply may take before it counts as a hang")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    backend = Backend()
    server = psutil.Process(backend.proc.pid)
    counts = {"raw": 0, "header": 0, "framing": 0}
    problems = {"hangs": 0, "unstructured": 0, "closed_unexpectedly": 0}
    error_codes: dict[str, int] = {}
    conn = backend.connect(timeout=args.timeout)
    rss_start = None
    started = time.perf_counter()
    for i in range(args.frames):
        if i == min(1000, args.frames // 10):
            rss_start = server.memory_info().rss
        kind = rng.choices(["raw", "header", "framing"], weights=[0.2, 0.7, 0.1])[0]
        counts[kind] += 1
        try:
            if kind == "raw":
                probe = backend.connect(hello=False, timeout=args.timeout)
                probe.send_raw(bytes(rng.randrange(256) for _ in range(rng.randint(4, 64))))
                try:
                    reply = probe.read()
                    if not structured(reply):
                        problems["unstructured"] += 1
                    error_codes[reply.header.get("code", reply.op)] = error_codes.get(reply.header.get("code", reply.op), 0) + 1
                except protocol.ConnectionClosed:
                    pass  # a partial frame: the server waits for more bytes, then we hang up
                except (TimeoutError, protocol.ProtocolError):
                    pass  # the frame announced more bytes than we sent; the server is still waiting
                probe.close()
                continue
            data = mutate_header(rng) if kind == "header" else broken_framing(rng)
            conn.send_raw(data)
            reply = conn.read()
            if not structured(reply):
                problems["unstructured"] += 1
            code = reply.header.get("code", reply.op)
            error_codes[code] = error_codes.get(code, 0) + 1
            if reply.op == "bye":
                raise RuntimeError("a mutated frame shut the server down")
            if reply.op == "accepted":
                while conn.read().op not in ("result", "cancelled", "error"):
                    pass
            if reply.header.get("code") in ("frame_too_large", "bad_frame"):
                conn.close()
                conn = backend.connect(timeout=args.timeout)
        except TimeoutError:
            problems["hangs"] += 1
            conn.close()
            conn = backend.connect(timeout=args.timeout)
        except (protocol.ConnectionClosed, ConnectionError):
            problems["closed_unexpectedly"] += 1
            conn = backend.connect(timeout=args.timeout)
    elapsed = time.perf_counter() - started
    conn.send({"op": "ping"})
    alive = conn.read().op == "pong" and backend.proc.poll() is None
    rss_end = server.memory_info().rss
    backend.stop()

    print(f"frames sent: {args.frames} ({', '.join(f'{k} {v}' for k, v in counts.items())}) in {elapsed:.1f} s "
          f"({args.frames / elapsed:.0f} frames/s), seed {args.seed}")
    print("replies by code: " + ", ".join(f"{k} {v}" for k, v in sorted(error_codes.items(), key=lambda kv: -kv[1])))
    print(f"crashes: {0 if alive else 1}   hangs: {problems['hangs']}   unstructured replies: {problems['unstructured']}   "
          f"unexpected closes: {problems['closed_unexpectedly']}")
    growth = (rss_end - (rss_start or rss_end)) / 2**20
    print(f"server RSS: {(rss_start or rss_end) / 2**20:.1f} MiB after warm-up -> {rss_end / 2**20:.1f} MiB at the end ({growth:+.1f} MiB)")
    ok = alive and not any(problems.values()) and growth < 20
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
