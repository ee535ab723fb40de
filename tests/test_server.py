import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BackendProcess, Client, backend_env

from backend.errors import BackendError
from backend.pipelines.base import Param
from backend.protocol import PROTOCOL_VERSION, Buffer, ConnectionClosed, ErrorCode


def submit(client: Client, **params) -> str:
    message = client.request({"op": "submit", "pipeline": "test-shape", "text": "a ball", "params": params})
    assert message.op == "accepted", message.header
    return message.header["job"]


def test_ready_line_and_private_token_file(backend):
    ready = backend.ready
    assert ready["event"] == "ready" and ready["protocol"] == PROTOCOL_VERSION and ready["pid"] == backend.proc.pid
    assert ready["port"] > 0 and ready["host"] == "127.0.0.1"
    token_file = Path(ready["token_file"])
    assert token_file.stat().st_mode & 0o077 == 0
    assert len(backend.token) >= 32


def test_welcome_lists_server_devices_and_pipelines(backend):
    client = Client(backend.port)
    welcome = client.hello(backend.token)
    assert welcome["server"]["pid"] == backend.proc.pid and welcome["server"]["version"]
    assert any(dev["kind"] == "cpu" for dev in welcome["devices"])
    shape = next(p for p in welcome["pipelines"] if p["name"] == "test-shape")
    assert {"steps", "seed", "max_faces"} <= {p["name"] for p in shape["params"]}
    assert shape["weights"]["ready"] is True


def test_a_preview_value_outside_its_parameter_fails_where_it_is_declared():
    with pytest.raises(BackendError, match="'steps' = 0 is outside"):
        Param("steps", int, 50, "denoising steps", minimum=1, maximum=200, preview=0)


def test_job_streams_progress_and_returns_mesh_as_raw_arrays(backend):
    client = backend.client()
    job = submit(client, steps=4, seed=3)
    result, events = client.until_done(job)
    assert result.op == "result", result.header
    steps = [(e.header["stage"], e.header["step"], e.header["total"]) for e in events if e.op == "progress"]
    assert ("shape", 4, 4) in steps and steps.index(("shape", 1, 4)) < steps.index(("shape", 4, 4))
    positions = result.buffer("positions").to_array()
    faces = result.buffer("faces").to_array()
    colors = result.buffer("colors").to_array()
    assert positions.dtype == np.float32 and positions.shape == (162, 3)
    assert faces.dtype == np.int32 and faces.shape == (320, 3)
    assert colors.shape == (162, 4)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 0.5, rtol=1e-5)
    header = result.header
    assert header["mesh"] == {"vertices": 162, "faces": 320, "bounds": header["mesh"]["bounds"], "frame": "y_up", "textures": []}
    assert header["seed"] == 3 and header["params"]["steps"] == 4
    assert {"prepare", "shape", "total"} <= set(header["timings"])


def test_lods_come_with_the_result_each_half_the_one_before(backend):
    client = backend.client()
    message = client.request({"op": "submit", "pipeline": "test-shape", "text": "a ball", "lods": 3,
                              "params": {"steps": 1, "subdivisions": 3}})
    assert message.op == "accepted", message.header
    result, events = client.until_done(message.header["job"])
    assert result.op == "result", result.header
    lod_steps = [(e.header["step"], e.header["total"], e.header["message"]) for e in events
                 if e.op == "progress" and e.header["stage"] == "lods"]
    assert lod_steps == [(0, 3, "LOD 1 of 3"), (1, 3, "LOD 2 of 3"), (2, 3, "LOD 3 of 3")]
    before = result.buffer("positions").to_array()
    before_faces = len(result.buffer("faces").to_array())
    assert before_faces == 1280 and len(result.header["lods"]) == 3 and "lods" in result.header["timings"]
    for level, described in enumerate(result.header["lods"], start=1):
        positions, faces, colors = (result.buffer(f"lod{level}.{name}").to_array() for name in ("positions", "faces", "colors"))
        assert described == {"vertices": len(positions), "faces": len(faces)}
        # fast-simplification stops at or just below its target: half the triangles of the level before.
        assert before_faces // 2 - 4 <= len(faces) <= before_faces // 2, (level, len(faces))
        assert faces.dtype == np.int32 and faces.max() < len(positions) and colors.shape == (len(positions), 4)
        # Each level still covers the sphere, decimated from the level before it.
        assert np.abs(np.linalg.norm(positions, axis=1) - 0.5).max() < 0.1
        assert len(positions) < len(before)
        before, before_faces = positions, len(faces)


def test_lods_outside_0_to_8_are_refused_with_the_range(backend):
    client = backend.client()
    for lods, code, text in ((9, "bad_message", "'lods' = 9 is outside 0 to 8"), (-1, "bad_message", "outside 0 to 8"),
                             ("2", "bad_message", "'lods' must be int"), (True, "bad_message", "'lods' must be int")):
        reply = client.request({"op": "submit", "pipeline": "test-shape", "text": "a ball", "lods": lods})
        assert reply.op == "error" and reply.header["code"] == code and text in reply.header["message"], reply.header
    result, _ = client.until_done(submit(client, steps=1))
    assert result.op == "result" and result.header["lods"] == [] and not [b for b in result.buffers if b.name.startswith("lod")]


def test_cancel_between_lods(backend):
    client = backend.client()
    message = client.request({"op": "submit", "pipeline": "test-shape", "text": "a ball", "lods": 8,
                              "params": {"steps": 1, "subdivisions": 6}})
    job = message.header["job"]
    while (event := client.read()).op != "progress" or event.header["stage"] != "lods":
        pass
    client.send({"op": "cancel", "job": job})
    closing, _ = client.until_done(job)
    assert closing.op == "cancelled" and closing.header["stage"] == "lods"


def test_results_are_saved_atomically_as_glb_and_json(backend):
    client = backend.client()
    result, _ = client.until_done(submit(client, steps=1))
    saved = result.header["saved"]
    glb, meta = Path(saved["glb"]), Path(saved["json"])
    assert glb.parent == backend.output_dir and glb.read_bytes()[:4] == b"glTF"
    record = json.loads(meta.read_text())
    assert record["params"]["steps"] == 1 and record["text"] == "a ball"
    assert not [p for p in backend.output_dir.iterdir() if p.name.endswith(".part")]


def test_unwritable_output_still_delivers_mesh(tmp_path):
    blocked = tmp_path / "outputs"
    blocked.write_text("a file where the folder should be")
    process = BackendProcess(tmp_path)
    try:
        client = process.client()
        result, _ = client.until_done(submit(client, steps=1))
        assert result.op == "result" and result.header["saved"] is None
        assert "could not write" in result.header["save_error"]
        assert result.buffer("positions").to_array().shape[0] > 0
    finally:
        process.stop()


def test_wrong_token_is_refused_and_connection_closed(backend):
    client = Client(backend.port)
    reply = client.hello("not-the-token")
    assert reply["op"] == "error" and reply["code"] == ErrorCode.UNAUTHORIZED
    with pytest.raises((ConnectionClosed, OSError)):
        client.read()


def test_first_message_must_be_hello(backend):
    client = Client(backend.port)
    reply = client.request({"op": "status"}).header
    assert reply["code"] == ErrorCode.HANDSHAKE_REQUIRED
    with pytest.raises((ConnectionClosed, OSError)):
        client.read()


def test_protocol_version_mismatch_says_so(backend):
    reply = Client(backend.port).hello(backend.token, version=PROTOCOL_VERSION + 1)
    assert reply["code"] == ErrorCode.PROTOCOL_MISMATCH
    assert str(PROTOCOL_VERSION) in reply["message"] and reply["hint"]


def test_http_request_is_refused_in_the_first_bytes(backend):
    sock = socket.create_connection(("127.0.0.1", backend.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    length = struct.unpack(">I", sock.recv(4))[0]
    reply = json.loads(sock.recv(length))
    assert reply["code"] == ErrorCode.FRAME_TOO_LARGE
    assert sock.recv(1) == b""


def test_bad_messages_get_errors_and_the_server_keeps_serving(backend):
    client = backend.client()
    sock = client.sock
    sock.sendall(struct.pack(">I", 5) + b"{bad}")
    assert client.read().header["code"] == ErrorCode.BAD_JSON
    assert client.request({"op": "fly"}).header["code"] == ErrorCode.UNKNOWN_OP
    assert client.request({"op": "cancel"}).header["code"] == ErrorCode.BAD_MESSAGE
    assert client.request({"op": "cancel", "job": "j999"}).header["code"] == ErrorCode.UNKNOWN_JOB
    reply = client.request({"op": "submit", "pipeline": "nope"}).header
    assert reply["code"] == ErrorCode.UNKNOWN_PIPELINE and "test-shape" in reply["hint"]
    reply = client.request({"op": "submit", "pipeline": "test-shape", "text": "x", "params": {"steps": "many"}}).header
    assert reply["code"] == ErrorCode.BAD_PARAMETER and "steps" in reply["message"]
    reply = client.request({"op": "submit", "pipeline": "test-shape", "params": {"stpes": 3}, "text": "x"}).header
    assert reply["code"] == ErrorCode.BAD_PARAMETER and "stpes" in reply["message"]
    reply = client.request({"op": "submit", "pipeline": "test-shape"}).header
    assert reply["code"] == ErrorCode.BAD_INPUT
    reply = client.request({"op": "submit", "pipeline": "test-shape"}, [Buffer.from_array("image", np.zeros((2, 2), np.float32))]).header
    assert reply["code"] == ErrorCode.BAD_INPUT
    assert client.request({"op": "ping", "ref": 7}).header == {"op": "pong", "time": pytest.approx(time.time(), abs=60), "ref": 7}


def test_job_errors_reach_the_client_with_a_hint(backend):
    client = backend.client()
    closing, _ = client.until_done(submit(client, steps=3, fail_at_step=1))
    assert closing.op == "error" and closing.header["code"] == "job_failed"
    assert closing.header["stage"] == "shape" and closing.header["hint"]
    result, _ = client.until_done(submit(client, steps=1))
    assert result.op == "result"


def test_jobs_from_two_clients_run_in_fifo_order(backend):
    first, second = backend.client(), backend.client()
    order = []
    a1 = submit(first, steps=5, step_delay=0.02)
    b1 = submit(second, steps=1)
    a2 = submit(first, steps=1)
    for client, jobs in ((first, [a1, a2]), (second, [b1])):
        for job in jobs:
            result, _ = client.until_done(job)
            assert result.op == "result"
            order.append((result.header["timings"]["total"], job))
    status = first.request({"op": "status"}).header
    assert status["queue"] == [] and status["running"] is None
    # A job's results arrive only after all jobs submitted before it have finished.
    saved = sorted(backend.output_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert [json.loads(p.read_text())["job"] for p in saved] == [a1, b1, a2]


def test_status_and_ping_answer_while_a_job_runs(backend):
    client, watcher = backend.client(), backend.client()
    job = submit(client, steps=100, step_delay=0.02)
    while True:
        event = client.read()
        if event.op == "progress" and event.header["stage"] == "shape":
            break
    status = watcher.request({"op": "status"}).header
    assert status["running"]["job"] == job and status["running"]["stage"] == "shape"
    assert any(dev["kind"] == "cpu" for dev in status["devices"]) and status["memory"] is not None
    assert watcher.request({"op": "ping"}).op == "pong"
    client.send({"op": "cancel", "job": job})
    closing, _ = client.until_done(job)
    assert closing.op == "cancelled" and closing.header["stage"] == "shape"


def test_pipelines_op_sees_weights_added_while_running(tmp_path):
    from safetensors.numpy import save_file

    from backend.weights import SVRM_WEIGHTS

    weights = tmp_path / "weights"
    weights.mkdir()
    backend = BackendProcess(tmp_path, "--weights", str(weights))
    try:
        client = Client(backend.port)

        def svrm(pipelines: list) -> dict:
            return next(p for p in pipelines if p["name"] == "hunyuan3d-1-svrm")["weights"]

        assert svrm(client.hello(backend.token)["pipelines"])["ready"] is False
        target = weights / SVRM_WEIGHTS.path
        target.parent.mkdir(parents=True)
        save_file({"probe": np.zeros(4, dtype=np.float32)}, str(target))
        reply = client.request({"op": "pipelines", "ref": 7})
        assert reply.op == "pipelines" and reply.header["ref"] == 7
        found = svrm(reply.header["pipelines"])
        assert found["ready"] is True and found["where"] == str(target) and not found["missing"]
        # A client that connects later is told the same.
        assert svrm(Client(backend.port).hello(backend.token)["pipelines"]) == found
    finally:
        backend.stop()


def test_cancel_queued_job(backend):
    client = backend.client()
    running = submit(client, steps=50, step_delay=0.02)
    queued = submit(client, steps=1)
    client.send({"op": "cancel", "job": queued})
    closing, _ = client.until_done(queued)
    assert closing.op == "cancelled" and closing.header["stage"] is None
    client.send({"op": "cancel", "job": running})
    assert client.until_done(running)[0].op == "cancelled"
    assert not list(backend.output_dir.glob("*.glb")) if backend.output_dir.exists() else True


def test_cannot_cancel_another_clients_job(backend):
    owner, other = backend.client(), backend.client()
    job = submit(owner, steps=20, step_delay=0.02)
    assert other.request({"op": "cancel", "job": job}).header["code"] == ErrorCode.UNKNOWN_JOB
    owner.send({"op": "cancel", "job": job})
    assert owner.until_done(job)[0].op == "cancelled"


def test_disconnect_drops_queued_and_cancels_running_jobs(backend):
    leaving, staying = backend.client(), backend.client()
    submit(leaving, steps=1000, step_delay=0.01)
    submit(leaving, steps=1000, step_delay=0.01)
    time.sleep(0.2)
    leaving.close()
    job = submit(staying, steps=1)
    result, _ = staying.until_done(job)  # finishes only if the other two were dropped
    assert result.op == "result"
    assert len(list(backend.output_dir.glob("*.glb"))) == 1


def test_queue_limit_answers_busy(tmp_path):
    process = BackendProcess(tmp_path, "--max-queue", "1")
    try:
        client = process.client()
        first = submit(client, steps=200, step_delay=0.01)
        while client.read().op != "progress":
            pass
        submit(client, steps=1)
        reply = client.request({"op": "submit", "pipeline": "test-shape", "text": "x"}).header
        assert reply["code"] == ErrorCode.BUSY and reply["hint"]
        client.send({"op": "cancel", "job": first})
    finally:
        process.stop()


def test_shutdown_op_stops_the_backend(backend):
    client = backend.client()
    assert client.request({"op": "shutdown", "ref": "s"}).header == {"op": "bye", "ref": "s"}
    assert backend.proc.wait(10) == 0
    assert not Path(backend.ready["token_file"]).exists()


def test_backend_exits_when_its_parent_dies(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process = BackendProcess(tmp_path, "--parent-pid", str(parent.pid))
    try:
        assert process.proc.poll() is None
        parent.kill()
        parent.wait()
        assert process.proc.wait(10) == 0
    finally:
        process.stop()


def test_token_file_given_is_used(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-long-enough-shared-secret\n")
    process = BackendProcess(tmp_path, "--token-file", str(token_file))
    try:
        assert process.token == "a-long-enough-shared-secret"
        process.client().close()
    finally:
        process.stop()
    assert token_file.exists()


def test_listening_beyond_loopback_needs_a_token_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "backend", "serve", "--host", "0.0.0.0"], capture_output=True, text=True,
                          env=backend_env(tmp_path), timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "--token-file" in proc.stderr and "Traceback" not in proc.stderr


def test_image_input_travels_as_encoded_bytes(backend):
    from io import BytesIO

    from PIL import Image

    png = BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(png, format="PNG")
    client = backend.client()
    reply = client.request({"op": "submit", "pipeline": "test-shape", "params": {"steps": 1}}, [Buffer.from_bytes("image", png.getvalue())])
    result, _ = client.until_done(reply.header["job"])
    assert result.header["images"] == ["input"]
    echoed = Image.open(BytesIO(result.buffer("image.input").to_bytes()))
    assert echoed.size == (8, 6) and echoed.mode == "RGBA"


def test_no_torch_needed_to_answer_help():
    code = "import sys, backend.cli, backend.protocol; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=backend_env(Path(os.getcwd())), timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_garbage_before_the_handshake_costs_the_connection(backend):
    client = Client(backend.port)
    client.sock.sendall(struct.pack(">I", 4) + b"\x00\x01\x02\x03")
    assert client.read().header["code"] == ErrorCode.HANDSHAKE_REQUIRED
    with pytest.raises((ConnectionClosed, OSError)):
        client.read()


@pytest.mark.parametrize(
    "data, hint",
    [
        (b"this is not a picture", "PNG"),
        (None, "scale the picture down"),
    ],
)
def test_bad_pictures_are_refused_at_submit(backend, data, hint):
    from io import BytesIO

    from PIL import Image

    if data is None:  # a decompression bomb: tiny file, huge pixel count
        png = BytesIO()
        Image.new("1", (10000, 10000)).save(png, format="PNG")
        data = png.getvalue()
        assert len(data) < 100_000
    client = backend.client()
    reply = client.request({"op": "submit", "pipeline": "test-shape"}, [Buffer.from_bytes("image", data)]).header
    assert reply["code"] == ErrorCode.BAD_INPUT and hint in reply["hint"]
    assert client.request({"op": "ping"}).op == "pong"


def test_cancel_storm_leaves_the_backend_consistent(backend):
    client = backend.client()
    jobs = [submit(client, steps=20, step_delay=0.005) for _ in range(10)]
    for job in jobs:
        client.send({"op": "cancel", "job": job})
        client.send({"op": "cancel", "job": job})
    endings = {}
    while len(endings) < len(jobs):
        message = client.read()
        if message.op in ("result", "cancelled", "error") and "job" in message.header:
            assert message.header["job"] not in endings, "a job ended twice"
            endings[message.header["job"]] = message.op
    assert set(endings) == set(jobs)
    status = client.request({"op": "status"}).header
    assert status["queue"] == [] and status["running"] is None
    result, _ = client.until_done(submit(client, steps=1))
    assert result.op == "result"
