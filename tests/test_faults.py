"""Faults injected into a running backend: it explains each one and keeps serving."""

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import BackendProcess

from backend.mesh import export


def test_injected_out_of_memory_steps_down_and_the_job_completes(backend):
    client = backend.client()
    job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x", "params": {"fail_times": 1}}).header["job"]
    result, events = client.until_done(job)
    assert result.op == "result", result.header
    downgrades = [e.header["downgrade"] for e in events if e.op == "progress" and "downgrade" in e.header]
    assert len(downgrades) == 1 and downgrades[0]["stage"] == "compute"
    assert "out of memory" in downgrades[0]["error"]
    assert result.header["info"]["dtype"] == "torch.float32"  # float16 weights computed in float32 on the CPU


def test_out_of_memory_twice_is_a_clear_error_and_the_backend_keeps_serving(backend):
    client = backend.client()
    job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x", "params": {"fail_times": 2}}).header["job"]
    closing, _ = client.until_done(job)
    assert closing.op == "error" and closing.header["code"] == "out_of_memory" and closing.header["hint"]
    job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x"}).header["job"]
    assert client.until_done(job)[0].op == "result"


def test_status_shows_what_is_resident(backend):
    client = backend.client()
    job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x"}).header["job"]
    client.until_done(job)
    memory = client.request({"op": "status"}).header["memory"]
    assert [c["name"] for c in memory["components"]] == ["test.linear"]
    assert memory["recent_stages"][-1]["stage"] == "compute"


def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.os, "fsync", full_disk)
    target = tmp_path / "out" / "mesh.glb"
    from conftest import icosphere_mesh

    with pytest.raises(OSError):
        export.save(icosphere_mesh(), target)
    assert list(target.parent.iterdir()) == []


def test_disk_full_while_saving_a_result_still_delivers_the_mesh(tmp_path):
    # A sitecustomize in the backend's path makes every fsync fail as on a full disk.
    hook = tmp_path / "hooks"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        "def _full(fd):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = _full\n"
    )
    process = BackendProcess(tmp_path, extra_pythonpath=[hook])
    try:
        client = process.client()
        job = client.request({"op": "submit", "pipeline": "test-shape", "text": "x", "params": {"steps": 1}}).header["job"]
        result, _ = client.until_done(job)
        assert result.op == "result" and result.header["saved"] is None
        assert "No space left" in result.header["save_error"]
        assert result.buffer("positions").to_array().shape == (162, 3)
        leftovers = list(Path(process.output_dir).iterdir()) if process.output_dir.exists() else []
        assert leftovers == []
    finally:
        process.stop()


@pytest.mark.parametrize("stage", ["encode", "triplane", "mesh"])
def test_cancel_during_every_reconstruction_stage_leaves_the_engine_consistent(tmp_path, stage):
    from test_svrm import sphere_svrm, views_request

    from backend.jobs import Job, JobEngine
    from backend.pipelines.base import JobRequest
    from backend.pipelines.hunyuan3d_v1.svrm.loading import save_checkpoint
    from backend.runtime import Runtime

    weights = tmp_path / "weights" / "svrm"
    weights.mkdir(parents=True)
    save_checkpoint(sphere_svrm(radius=0.25), weights / "svrm.safetensors")
    engine = JobEngine(Runtime.create(device="cpu", memory="cpu"), output_dir=tmp_path / "out", weights_dir=str(weights.parent))
    pipeline = engine.pipeline("hunyuan3d-1-svrm")
    request: JobRequest = views_request(pipeline, resolution=32, max_faces=2000)

    def run(cancel_in: str | None) -> list[dict]:
        events: list[dict] = []

        def sink(header, buffers):
            events.append(header)
            if header["op"] == "progress" and header["stage"] == cancel_in:
                job.cancel.set()

        job = Job(id=f"cancel-{cancel_in}", request=request, owner=None, sink=sink)
        engine.execute(job)
        return events

    events = run(stage)
    assert events[-1] == {"op": "cancelled", "job": f"cancel-{stage}", "stage": stage}
    assert not (tmp_path / "out").exists()  # nothing saved for a cancelled job
    finished = run(None)[-1]
    assert finished["op"] == "result" and finished["mesh"]["faces"] > 0


def test_release_gives_memory_back_and_idle_release_follows_keep_alive(tmp_path):
    backend = BackendProcess(tmp_path, "--keep-alive", "0.04")  # 2.4 s
    try:
        client = backend.client()
        job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x"}).header["job"]
        assert client.until_done(job)[0].op == "result"
        status = client.request({"op": "status"}).header
        assert status["keep_alive_s"] == pytest.approx(2.4) and 0 < status["idle_release_in_s"] <= 2.4
        assert status["memory"]["components"][0]["placement"] == "ready"  # cpu mode: a float32 copy of float16 weights
        released = client.request({"op": "release"})
        assert released.op == "released", released.header
        float32_bytes = (3 * 3 + 3) * 4
        assert released.header["freed"] == [{"component": "test.linear", "bytes": float32_bytes}]
        assert released.header["freed_bytes"] == float32_bytes
        status = client.request({"op": "status"}).header
        assert status["memory"]["components"][0]["placement"] == "parked"
        assert client.request({"op": "release"}).header["freed"] == [], "nothing left to free"

        job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x"}).header["job"]
        assert client.until_done(job)[0].op == "result"
        assert client.request({"op": "status"}).header["memory"]["components"][0]["placement"] == "ready"
        deadline = time.monotonic() + 20
        while True:
            status = client.request({"op": "status"}).header
            if status["memory"]["components"][0]["placement"] == "parked" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status["memory"]["components"][0]["placement"] == "parked", "released after idling for --keep-alive"
        assert status["idle_release_in_s"] is None
    finally:
        backend.stop()


def test_status_hammered_from_several_clients_during_a_multi_stage_job(backend):
    client = backend.client()
    watchers = [backend.client() for _ in range(4)]
    job = client.request({"op": "submit", "pipeline": "test-memory", "text": "x",
                          "params": {"stages": 12, "stage_delay": 0.05}}).header["job"]
    replies: list[list[str]] = [[] for _ in watchers]
    done = threading.Event()

    def hammer(watcher, seen):
        while not done.is_set():
            seen.append(watcher.request({"op": "status"}).op)

    threads = [threading.Thread(target=hammer, args=pair) for pair in zip(watchers, replies)]
    for thread in threads:
        thread.start()
    result, _ = client.until_done(job)
    done.set()
    for thread in threads:
        thread.join(30)
    assert result.op == "result", result.header
    assert all(seen and set(seen) == {"status"} for seen in replies), [set(seen) for seen in replies]
    memory = client.request({"op": "status"}).header["memory"]
    assert len(memory["components"]) == 12


def test_an_unexpected_error_answering_a_message_is_internal_and_the_connection_stays(backend):
    client = backend.client()
    reply = client.request({"op": "submit", "pipeline": "test-buggy", "text": "x"})
    assert reply.op == "error" and reply.header["code"] == "internal" and "KeyError" in reply.header["message"]
    assert client.request({"op": "ping"}).op == "pong"
