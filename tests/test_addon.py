"""The Blender add-on in real Blender (the bpy wheel) against a real backend process.

The zip comes from build.py and is installed through Blender's extension machinery; every
scenario runs in its own Blender process (see addon_support and blender_scenarios).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
import time
import types
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from addon_support import ROOT, build_zip, run_scenario
from fixture_pipelines import CRASH_EXIT_CODE, icosphere

# bpy itself is imported only in the scenario processes, never in the test process.
pytestmark = pytest.mark.skipif(find_spec("bpy") is None, reason="needs the bpy wheel (Python 3.11)")


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    return build_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def addon_package(addon_zip, tmp_path_factory):
    """The zip's add-on as a package whose bpy-free modules import without its __init__ (which needs bpy)."""
    folder = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(addon_zip) as archive:
        archive.extractall(folder)
    package = types.ModuleType("addon_under_test")
    package.__path__ = [str(folder / "hunyuan3d_blender")]
    sys.modules["addon_under_test"] = package
    yield package
    for name in [n for n in sys.modules if n == "addon_under_test" or n.startswith("addon_under_test.")]:
        del sys.modules[name]


def test_build_is_reproducible_and_bundles_the_one_protocol(addon_zip, tmp_path):
    again = build_zip(tmp_path)
    assert again.name == addon_zip.name == "hunyuan3d_blender-0.1.0.zip"
    assert again.read_bytes() == addon_zip.read_bytes()
    with zipfile.ZipFile(addon_zip) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert all(name.startswith("hunyuan3d_blender/") for name in names)
        assert "hunyuan3d_blender/blender_manifest.toml" in names
        bundled = archive.read("hunyuan3d_blender/backend/protocol.py")
        assert not any(name.endswith(".pyc") or "__pycache__" in name for name in names)
    assert bundled == (ROOT / "backend" / "protocol.py").read_bytes()
    tracked = subprocess.run(["git", "ls-files", "blender_addon"], cwd=ROOT, check=False, capture_output=True, text=True).stdout
    assert "protocol" not in tracked


def test_build_help_explains_the_options():
    done = subprocess.run([sys.executable, str(ROOT / "build.py"), "--help"], check=False, capture_output=True, text=True)
    assert done.returncode == 0
    for option in ("--output-dir", "--blender", "--validator", "--no-validate"):
        assert option in done.stdout


def test_generate_puts_the_coloured_mesh_at_the_cursor(addon_zip, tmp_path):
    facts = run_scenario("generate", addon_zip, tmp_path)
    obj = facts["object"]
    positions, faces = icosphere(3, 0.75)
    assert (obj["vertices"], obj["faces"]) == (len(positions), len(faces)) == (642, 1280)
    assert obj["triangles_only"] and obj["smooth"] and not obj["invalid"]
    # Y-up from the backend becomes Z-up: (x, y, z) -> (x, -z, y)
    expected = np.stack([positions[:, 0], -positions[:, 2], positions[:, 1]], axis=1)
    assert np.allclose(np.reshape(obj["positions"], (-1, 3)), expected, atol=1e-5)
    rng = np.random.default_rng(7)
    expected_srgb = np.clip(rng.random(3) + 0.3 * positions / 0.75, 0, 1)
    expected_linear = np.where(expected_srgb <= 0.04045, expected_srgb / 12.92, ((expected_srgb + 0.055) / 1.055) ** 2.4)
    colors = np.reshape(obj["colors"], (-1, 4))
    assert np.allclose(colors[:, :3], expected_linear, atol=1e-5) and np.allclose(colors[:, 3], 1.0)
    assert (obj["color_domain"], obj["color_type"]) == ("POINT", "FLOAT_COLOR")
    assert obj["material_color_nodes"] == [obj["color_name"]]
    assert obj["location"] == pytest.approx([1.0, -2.0, 0.5])
    assert obj["selected"] and obj["active"] and not facts["cube_selected"]
    assert obj["collections"] == ["Target"]
    assert "UNDO" in facts["import_operator_options"]
    # pump() may apply several events per call, so a look between calls can miss any step (the last one too);
    # what is seen comes in order and belongs to this job.
    shape_steps = [int(text.split()[1].split("/")[0]) for text in facts["progress"] if text.startswith("Shape ")]
    assert shape_steps and shape_steps == sorted(shape_steps) and max(shape_steps) <= 12
    assert all(text.endswith("/12") for text in facts["progress"] if text.startswith("Shape "))
    assert facts["outcome"].startswith(obj["name"]) and "642 vertices" in facts["outcome"]
    assert facts["history"] == ["input.png (test-shape, seed 7)"]
    assert facts["pictures"] == {"input": True}, "the prepared input picture the backend returns is in the History too"
    assert Path(facts["saved"]["glb"]).is_file() and Path(facts["saved"]["glb"]).is_relative_to(tmp_path)
    again = facts["reimported"]
    assert again["name"] != obj["name"] and again["vertices"] == 642
    assert again["location"] == pytest.approx([0.0, 0.0, 3.0])


def test_free_gpu_memory_button_and_release_before_rendering(addon_zip, tmp_path):
    facts = run_scenario("free_gpu_memory", addon_zip, tmp_path)
    assert facts["handler_installed"] and facts["default_release_before_render"]
    # On the CPU the backend keeps a float32 copy of the float16 test weights ready between jobs;
    # releasing drops it, as it drops the GPU's copies on a GPU.
    assert facts["after_job"] == "ready" and facts["after_button"] == "parked"
    assert facts["after_render_without_preference"] == "ready" and facts["after_render"] == "parked"


def test_the_importers_edges_are_the_ones_blender_would_compute(addon_zip, tmp_path):
    facts = run_scenario("import_equivalence", addon_zip, tmp_path)
    ours, blender = facts["ours"], facts["blender"]
    assert ours["edge_count"] == len(set(map(tuple, ours["edges"]))) == 7 * 10 + 8 * 9 + 7 * 9  # each edge once
    assert ours == blender  # the same vertices, edges, faces, corner-to-edge links and smooth shading
    assert facts["face_by_face"] == ours  # the face offsets copied at once or set face by face agree
    # the layout set_face_starts needs for its one copy (so the import above did not fall back)
    assert facts["faces_at_consecutive_ints"] == [4 * i for i in range(len(ours["faces"]))]
    assert not facts["ours_invalid"] and facts["colors_match"]


def test_cancel_stops_the_job_and_the_backend_keeps_working(addon_zip, tmp_path):
    facts = run_scenario("cancel", addon_zip, tmp_path)
    assert facts["outcome"] == ["cancelled", "Cancelled during shape"]
    assert facts["objects_added"] == 0 and facts["phase"] == "ready"
    assert facts["after"] == ["result", 1]


def test_killed_backend_gives_a_clear_error_and_restart_works(addon_zip, tmp_path):
    facts = run_scenario("backend_killed", addon_zip, tmp_path)
    crashed = facts["crashed"]
    crash_line = "test-shape: crashing at step 3 as asked"
    assert crashed["outcome"][0] == "error" and crashed["phase"] == "failed"
    message, hint, quoted = crashed["problem"]
    assert message == f"The backend stopped (exit code {CRASH_EXIT_CODE})" and "backend.log" in hint
    assert quoted[-1] == crash_line and crash_line in crashed["panel"]
    kind, message, hint = facts["outcome"]
    assert kind == "error" and "backend stopped" in message and "Restart" in hint
    assert facts["phase"] == "failed" and "exit code" in facts["problem"][0]
    assert facts["second_pid_differs"] and facts["after_restart"] == "result"
    # Each start keeps the earlier logs: the crashed backend's is two starts back.
    logs = facts["logs"]
    assert sorted(logs) == ["backend.1.log", "backend.2.log", "backend.log"]
    assert crash_line in logs["backend.2.log"] and crash_line not in logs["backend.1.log"] + logs["backend.log"]


def test_a_frozen_backend_is_flagged_and_recovers(addon_zip, tmp_path):
    facts = run_scenario("frozen_backend", addon_zip, tmp_path)
    assert facts == {"flagged": True, "phase_while_frozen": "ready", "recovered_phase": "ready"}


def assert_left_to_end_cleanly(facts: dict) -> None:
    """Blender's main thread did not wait for the backend, which cancelled its job, exited 0 and removed its token."""
    assert facts["backend_running_when_returned"], facts["main_thread_seconds"]
    assert facts["exit_code"] == 0, facts["log_tail"]
    assert "terminate called" not in facts["log_tail"]
    assert not facts["token_file_left"]


def test_disabling_mid_job_leaves_nothing_running(addon_zip, tmp_path):
    facts = run_scenario("disable", addon_zip, tmp_path, nano_image=str(ROOT / "examples" / "snowman.png"))
    assert_left_to_end_cleanly(facts)
    assert not facts["enabled"] and not facts["hy3d_registered"]
    assert not facts["timer"] and facts["handlers"] == []
    assert facts["threads"] == [] and not facts["session_threads"]
    assert facts["sockets"] == 0
    assert facts["reenabled"] == "ready"


def test_quitting_mid_job_ends_the_backend_cleanly(addon_zip, tmp_path):
    facts = run_scenario("quit", addon_zip, tmp_path, nano_image=str(ROOT / "examples" / "snowman.png"))
    assert_left_to_end_cleanly(facts)


def test_the_plan_under_generate_follows_the_inputs_and_learns_the_time_from_a_job(addon_zip, tmp_path):
    facts = run_scenario("plan", addon_zip, tmp_path)
    first = facts["first"]
    assert (first["pipeline"], first["params"]["steps"], first["mode"], first["accelerator"], first["time"]) == ("test-shape", 4, "cpu", None, None)
    assert facts["first_sent"] == [{"op": "plan", "pipeline": "test-shape", "params": facts["first_sent"][0]["params"], "inputs": [],
                                    "text": "a small round stone", "ref": facts["first_sent"][0]["ref"]}]
    line = next(line for line in facts["first_panel"] if line.startswith("cpu, ~"))
    assert facts["first_panel"].index(line) == facts["first_panel"].index("[hy3d.generate]") + 1  # right under the button
    assert "RAM,timeknownafteritsfirstrun" in "".join(facts["first_panel"]).replace(" ", "")  # the panel wraps long lines
    assert facts["sent_while_changing"] == 0 and facts["sent_after_settling"] == [8]
    assert facts["sent_after_prompt"] == 2  # a new prompt asks nothing new
    after = facts["after_job"]
    assert after["params"]["steps"] == 4 and after["time"]["scaled"] == {}
    assert ",about" in "".join(facts["after_job_panel"]).replace(" ", "")
    scaled = facts["scaled"]
    assert scaled["scaled"] == {"shape": "steps 4 -> 8"} and scaled["stages"]["shape"] == pytest.approx(2 * after["time"]["stages"]["shape"], abs=0.002)


def test_generate_without_a_usable_image_is_greyed_out_with_the_reason(addon_zip, tmp_path):
    facts = run_scenario("missing_image", addon_zip, tmp_path)
    for label, reason in (("empty", "Choose an image first"), ("missing", f"Image not found: {tmp_path / 'no-such.png'}")):
        case = facts[label]
        assert not case["poll"] and not case["job"]
        assert reason in case["pressed"] and "Traceback" not in case["pressed"]
        assert reason.replace(" ", "") in "".join(case["panel"]).replace(" ", "")  # the panel wraps long lines
    chosen = facts["chosen"]
    assert chosen["poll"] and chosen["pressed"] == ["FINISHED"]
    assert not any("Choose" in line or "not found" in line for line in chosen["panel"])
    assert facts["last"] == "result"


def test_inputs_survive_file_new_and_open(addon_zip, tmp_path):
    facts = run_scenario("file_load", addon_zip, tmp_path)
    before = facts["before"]
    assert before["params"]["seed"] == 11 and before["params"]["steps"] == 40 and before["image_path"].endswith("input.png")
    assert facts["after_new"] == before
    assert facts["after_open"] == before
    kind, message = facts["outcome"]
    assert kind == "result" and "added to this one" in message and facts["object_in_new_file"]
    assert facts["next_job"] == {"outcome": "result", "seed": 11, "radius": pytest.approx(0.3)}


def test_objects_keep_their_settings_for_regenerate_variations_and_load_settings(addon_zip, tmp_path):
    facts = run_scenario("settings_travel", addon_zip, tmp_path)
    image = facts["image"]
    stored = facts["stored"]
    assert facts["reopened_stored"] == stored  # saved in the .blend and read back
    assert stored["model"] == "test-shape" and stored["seed"] == 5 and stored["image_path"] == image
    assert stored["backend_version"] == "0.1.0" and "prompt" not in stored
    params = json.loads(stored["params"])
    assert params["seed"] == 5 and params["radius"] == pytest.approx(0.6) and params["subdivisions"] == 2
    original = facts["original"]
    assert original["name"] in facts["panel"][0] and "test-shape, seed 5" in facts["panel"][0]
    assert {"[hy3d.regenerate]", "[hy3d.load_settings]", "[hy3d.variations]", "[variations=3]"} <= set(facts["panel"])

    # Regenerate uses the object's settings, not the panel's (changed to a text prompt, seed 99, another radius).
    (again,) = facts["regenerated"]
    assert again["stored"] == stored
    assert again["vertices"] == original["vertices"] == 162 and again["faces"] == original["faces"]
    assert again["positions"] == original["positions"] and again["colors"] == original["colors"]

    variations = facts["variations"]
    assert variations["queued"] == [2, True]  # one job sent, two waiting
    seeds = [obj["stored"]["seed"] for obj in variations["objects"]]
    assert len(seeds) == len(set(seeds)) == 3 and 5 not in seeds
    for obj, seed in zip(variations["objects"], seeds, strict=True):
        assert json.loads(obj["stored"]["params"])["seed"] == seed and obj["vertices"] == 162
        assert obj["colors"] != original["colors"]  # the seed picks the colour: each is its own mesh

    # The panel lists the queued jobs, each with a button that drops it; Cancel stops the running one only.
    assert sum(line.startswith("Queued: input.png (test-shape, seed ") for line in facts["panel_queued"]) == 2
    assert facts["panel_queued"].count("[hy3d.drop_queued]") == 2
    dropped = facts["cancelled_and_dropped"]
    assert dropped["seeds"] == [dropped["kept_seed"]]

    loaded = facts["loaded"]
    chosen = variations["objects"][1]["stored"]
    assert (loaded["pipeline"], loaded["source"], loaded["image_path"]) == ("test-shape", "IMAGE", image)
    assert loaded["params"]["seed"] == chosen["seed"] and loaded["params"]["radius"] == pytest.approx(0.6)
    assert loaded["params"]["subdivisions"] == 2 and loaded["params"]["steps"] == 20


def test_extra_views_have_fields_are_checked_sent_by_name_and_kept_for_regenerate(addon_zip, tmp_path):
    facts = run_scenario("extra_views", addon_zip, tmp_path)
    paths = facts["paths"]
    assert facts["fields"] == ["left", "back", "right"]
    assert {"[Left=]", "[Back=]", "[Right=]"} <= set(facts["panel_empty"])
    missing = facts["missing"]
    reason = f"Right view not found: {tmp_path / 'no-such-right.png'}"
    assert not missing["poll"] and missing["problem"] == reason and reason in missing["pressed"]
    assert f"[Left={paths['left']}]" in facts["panel_chosen"] and "[Right=]" in facts["panel_chosen"]
    # The backend got the front as "image" and each chosen view under its own name (told apart by their sizes).
    assert facts["sizes"] == {"image": [4, 4], "left": [5, 5], "back": [6, 6]}
    stored = facts["stored"]
    assert stored["image_path"] == paths["front"]
    assert json.loads(stored["views"]) == {"left": paths["left"], "back": paths["back"]}
    assert facts["fields_other_model"] == []
    assert facts["regenerated_sizes"] == facts["sizes"]
    assert facts["loaded"] == {"pipeline": "test-views", "image_path": paths["front"],
                               "views": {"left": paths["left"], "back": paths["back"], "right": ""}}


def test_launch_problems_are_explained(addon_zip, tmp_path):
    bare = tmp_path / "bare-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    facts = run_scenario("launch_errors", addon_zip, tmp_path / "run", bare_python=str(bare / "bin" / "python"))
    phase, message, hint = facts["missing"]
    assert phase == "failed" and "not found" in message and "preferences" in hint
    phase, message, hint = facts["bare"]
    assert phase == "failed" and ("has no 'numpy' module" in message or "has no 'torch' module" in message)
    assert str(bare) in message and "pip install" in hint


def test_attach_to_a_running_backend_with_its_token(addon_zip, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-token-long-enough-for-the-backend\n")
    backend = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve", "--port", "0", "--token-file", str(token_file),
         "--pipelines-from", "fixture_pipelines", "--output-dir", str(tmp_path / "out")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests"))), "HY3D_HOME": str(tmp_path)},
        stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(backend.stdout.readline())
        facts = run_scenario("attach", addon_zip, tmp_path / "run", port=ready["port"],
                             token="a-token-long-enough-for-the-backend")
    finally:
        backend.terminate()
        backend.wait(10)
    assert facts["wrong"]["phase"] == "failed" and "wrong token" in facts["wrong"]["problem"]
    assert facts["right"] == {"phase": "ready", "problem": None}
    assert facts["summary"][0].startswith("hunyuan3d-blender-backend 0.1.0")
    device = facts["summary"][1]
    assert ", cpu, computes in float32" in device and "GiB free" in device
    assert facts["backend_pid"] is None


def test_set_up_backend_respects_online_access_reports_progress_cancels_and_removes(addon_zip, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    facts = run_scenario("environment_setup", addon_zip, tmp_path / "run", wheels=str(wheels))
    assert facts["online_access"] is False
    assert facts["status_before"][0].startswith("Not set up")
    kind, message, hint = facts["offline"]
    assert kind == "error" and "Online access is off" in message and "Allow Online Access" in hint and "wheels" in hint
    assert not facts["offline_created"]
    kind, message, hint = facts["empty_wheels"]
    env_dir = tmp_path / "run" / "backend-env"
    assert kind == "error" and message.startswith("Installing torch 2.13.0 (cpu) failed") and "No matching distribution" in message
    assert str(env_dir / "hy3d-setup" / "setup.log") in hint and facts["log_exists"]
    assert facts["messages"][0] == "Creating the environment" and "Installing torch 2.13.0 (cpu)" in facts["messages"]
    assert facts["launch_python"] == ""
    assert facts["cancel_pressed"] and facts["cancelled"][0] == "cancelled" and "resume" in facts["cancelled"][2]
    assert facts["removed"] == ["removed", f"Removed {env_dir}", ""]
    assert not facts["exists_after_remove"] and facts["status_after"][0].startswith("Not set up")
    assert facts["reads_while_unchanged"] == 0 and facts["reads_after_a_change"] == 1


def test_download_weights_respects_online_access_shows_errors_and_updates_the_model_list(addon_zip, tmp_path):
    facts = run_scenario("download_weights", addon_zip, tmp_path)
    assert facts["missing"] == ["tencent/Hunyuan3D-1: svrm/", "hunyuan3d-1-svrm", ""]
    licence = "Tencent Hunyuan Non-Commercial License"
    panel = facts["panel_missing"]
    shown = " ".join(panel)  # the panel wraps long lines
    assert panel[:2] == ["Weights missing", "tencent/Hunyuan3D-1: svrm/"] and f"Licence: {licence} [wm.url_open: Read the Licence]" in shown
    assert "It does not apply in the European Union, the United Kingdom and South Korea" in shown
    assert panel[-2:] == ["[hy3d.download_weights: Agree and Download]", "[hy3d.refresh_models]"]
    # Without agreeing nothing starts; agreeing is remembered, and the button becomes a plain Download Weights.
    assert licence in facts["unagreed_result"] and "Agree and Download" in facts["unagreed_result"]
    assert facts["unagreed"] == {"running": False, "children": [], "agreed": ""}
    assert facts["agreed"] == licence
    assert facts["panel_agreed"][2:] == ["[hy3d.download_weights]", "[hy3d.refresh_models]"]
    assert facts["backend_agreed"] == {"accepted": [licence]}  # the add-on passed --accept-license
    assert facts["panel_running"][0] == "Downloading hunyuan3d-1-svrm" and facts["panel_running"][-1] == "[hy3d.cancel_download]"
    assert facts["panel_failed"][0] == facts["failed"][1][:len(facts["panel_failed"][0])]
    assert facts["online_access"] is False
    assert "Online access is off" in facts["refused_result"]
    kind, message, hint = facts["refused"]
    weights = tmp_path / "weights"
    assert kind == "error" and message == "Online access is off, so nothing was downloaded"
    assert "Preferences > System > Network > Allow Online Access" in hint
    assert hint.endswith(f"-m backend download hunyuan3d-1-svrm --weights {weights} --accept-license")
    assert not facts["refused_running"] and facts["refused_children"] == [] and not facts["refused_log"]

    assert facts["started"] == ["FINISHED"] and facts["pumps_while_running"] > 0
    kind, message, hint = facts["failed"]
    assert kind == "error" and message.startswith("downloading tencent/Hunyuan3D-1 failed: ")
    assert hint.startswith("check the network connection") and hint.endswith(f"the log is {facts['log_path']}")
    assert facts["last_line"] == f"downloading tencent/Hunyuan3D-1 (the reconstruction model) to {weights}"
    assert Path(facts["log_path"]).name == "download.log"
    assert facts["last_line"] in facts["log"] and f"error: {message}" in facts["log"] and "exit code 1" in facts["log"]
    assert facts["after"] == {"phase": "ready", "same_backend": True, "children": []}

    kind, message, hint = facts["succeeded"]
    assert (kind, message) == ("done", f"Downloaded hunyuan3d-1-svrm to {weights / 'svrm'}")
    assert hint == "the model list is updated to include them"
    # The backend the add-on launched looked again: no restart, the model stays chosen, nothing is missing.
    assert facts["after_download"] == {"pipeline": "hunyuan3d-1-svrm", "same_backend": True, "panel": []}


def fake_backend_python(folder: Path, body: str) -> str:
    """An executable that stands in for the backend's python: it records how it was called, then runs ``body``."""
    script = folder / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n"
                      f"json.dump({{'argv': sys.argv[1:], 'pythonpath': os.environ['PYTHONPATH'], 'cwd': os.getcwd()}}, "
                      f"open({str(folder / 'called.json')!r}, 'w'))\n" + body)
    script.chmod(0o755)
    return str(script)


def pump_task(task, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: line {task.line!r}, last {task.last}"
        task.pump()
        time.sleep(0.005)


def test_download_task_streams_progress_bars_and_reports_the_folders(addon_package, tmp_path):
    downloads = importlib.import_module("addon_under_test.downloads")
    go_on = tmp_path / "go-on"
    python = fake_backend_python(tmp_path, f"""
print("downloading tencent/Hunyuan3D-1 (the reconstruction model) to W", file=sys.stderr, flush=True)
sys.stderr.write("\\rFetching 2 files:  50%|#####     | 1/2")
sys.stderr.flush()
while not os.path.exists({str(go_on)!r}):
    time.sleep(0.01)
sys.stderr.write("\\rFetching 2 files: 100%|##########| 2/2\\n")
print("W/svrm")
""")
    request = downloads.DownloadRequest(model="hunyuan3d-1-svrm", python=python, package_dir=str(tmp_path),
                                        log_path=str(tmp_path / "logs" / "download.log"), allow_online=True,
                                        weights_dir="W", extra_pythonpath=("plugins",))
    task = downloads.DownloadTask()
    task.start(request)
    pump_task(task, lambda: "50%" in task.line)
    assert task.running and task.line == "Fetching 2 files:  50%|#####     | 1/2" and task.fraction == 0.5
    go_on.touch()
    pump_task(task, lambda: not task.running)
    assert task.last == downloads.Outcome("done", "Downloaded hunyuan3d-1-svrm to W/svrm")
    called = json.loads((tmp_path / "called.json").read_text())
    assert called["argv"] == ["-m", "backend", "download", "hunyuan3d-1-svrm", "--weights", "W"]
    assert called["pythonpath"] == os.pathsep.join((str(tmp_path), "plugins")) and called["cwd"] == str(tmp_path)
    log = (tmp_path / "logs" / "download.log").read_text()
    assert log.startswith("$ cd ") and "2/2\nexit code 0\n" in log


def test_download_task_cancel_ends_the_process(addon_package, tmp_path):
    downloads = importlib.import_module("addon_under_test.downloads")
    python = fake_backend_python(tmp_path, 'print("downloading", file=sys.stderr, flush=True)\ntime.sleep(120)\n')
    task = downloads.DownloadTask()
    task.start(downloads.DownloadRequest(model="hunyuandit", python=python, package_dir=str(tmp_path),
                                         log_path=str(tmp_path / "download.log"), allow_online=True))
    pump_task(task, lambda: task.line == "downloading")
    process = task._process
    with pytest.raises(downloads.DownloadError, match="Already downloading hunyuandit"):
        task.start(downloads.DownloadRequest(model="hunyuandit", python=python, package_dir=str(tmp_path),
                                             log_path=str(tmp_path / "other.log"), allow_online=True))
    task.cancel()
    assert task.message == "Cancelling..."
    pump_task(task, lambda: not task.running)
    assert task.last.kind == "cancelled" and "again" in task.last.hint
    assert process.poll() is not None


def test_missing_weights_offers_the_download_the_backend_knows(addon_package):
    downloads = importlib.import_module("addon_under_test.downloads")
    lite = {"name": "hunyuan3d-1-lite", "weights": {"ready": False, "where": "searched the Hugging Face cache",
            "missing": ["tencent/Hunyuan3D-1: mvd_lite/model_index.json", "tencent/Hunyuan3D-1: mvd_lite/unet/config.json",
                        "tencent/Hunyuan3D-1: svrm/svrm.safetensors"], "download": "hf download tencent/Hunyuan3D-1"}}
    assert downloads.missing_weights(lite, text_prompt=False) == downloads.MissingWeights(
        "tencent/Hunyuan3D-1: mvd_lite/, svrm/ (3 files)", "hunyuan3d-1-lite")
    trained_here = {"name": "nano", "weights": {"ready": False, "missing": ["nano/nano.safetensors"],
                                                "download": "python -m backend.pipelines.nano.train"}}
    assert downloads.missing_weights(trained_here, text_prompt=False) == downloads.MissingWeights(
        "nano/", "", "python -m backend.pipelines.nano.train")
    images_only = {"name": "hunyuan3d-1-std", "weights": {"ready": True, "where": "the standard multiview model: /w; "
                   "text prompts also need HunyuanDiT: hf download Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled"}}
    assert downloads.missing_weights(images_only, text_prompt=False) is None
    assert downloads.missing_weights(images_only, text_prompt=True).model == "hunyuandit"
    assert downloads.missing_weights({"name": "test-shape", "weights": {"ready": True, "where": "built in"}}, True) is None


def test_recipe_round_trip_new_seeds_and_damaged_properties(addon_package):
    recipe = importlib.import_module("addon_under_test.recipe")
    session = importlib.import_module("addon_under_test.session")
    request = session.GenerationRequest("hunyuan3d-1-lite", {"seed": 0, "steps": 30, "guidance": 1.5, "remove_background": True},
                                        text="a wooden chair")
    stored = recipe.to_properties(request, 1234, "0.1.0")
    assert stored["seed"] == 1234 and stored["prompt"] == "a wooden chair" and "image_path" not in stored
    again = recipe.from_properties(stored)
    assert again == session.GenerationRequest("hunyuan3d-1-lite", {**request.params, "seed": 1234}, text="a wooden chair")
    assert isinstance(again.params["guidance"], float) and again.params["remove_background"] is True

    varied = recipe.with_new_seeds(again, 5, random.Random(3))
    seeds = [r.params["seed"] for r in varied]
    assert len(set(seeds)) == 5 and 1234 not in seeds and all(0 <= s < 2**31 for s in seeds)
    assert all(r.params["steps"] == 30 and r.text == "a wooden chair" for r in varied)

    multiview = session.GenerationRequest("hunyuan3d-2mv", {"seed": 1}, image_path="/p/front.png",
                                          views={"left": "/p/left.png", "back": "/p/back.png"})
    assert recipe.from_properties(recipe.to_properties(multiview, 1, "0.1.0")) == multiview

    for damaged, why in (({"model": "nano"}, "damaged"), ({"model": "nano", "params": "{not json"}, "damaged"),
                         ({"model": "nano", "params": "[1, 2]"}, "not a JSON object"),
                         ({"model": "nano", "params": "{}", "views": "{not json"}, "damaged"),
                         ({"model": "nano", "params": "{}", "views": '{"left": 3}'}, "views are not")):
        with pytest.raises(recipe.RecipeError, match=why) as error:
            recipe.from_properties(damaged)
        assert "generate it again" in error.value.hint


def test_the_same_zip_installs_as_a_legacy_add_on(addon_zip, tmp_path):
    facts = run_scenario("legacy", addon_zip, tmp_path)
    assert facts["install"] == ["FINISHED"] and facts["enabled"] and facts["generate_operator"]
    assert Path(facts["protocol_file"]).parent.parent.name == "hunyuan3d_blender"


def test_preview_variations_are_quick_side_by_side_and_refine_keeps_the_seed(addon_zip, tmp_path):
    facts = run_scenario("previews", addon_zip, tmp_path)
    assert "[hy3d.preview_variations]" in facts["panel"] and "[variations=3]" in facts["panel"]
    assert facts["queued"] == [2, True]  # one job per seed: one sent, two waiting
    # The test pipeline declares steps and subdivisions cheap for a preview (its catalogue's "preview" values).
    assert facts["sent"][0]["steps"] == 1 and facts["sent"][0]["subdivisions"] == 1
    previews = facts["previews"]
    seeds = [p["stored"]["seed"] for p in previews]
    assert len(previews) == len(set(seeds)) == 3
    for preview in previews:
        stored = preview["stored"]
        assert stored["quality"] == "preview" and preview["vertices"] == 42  # subdivisions 1
        params = json.loads(stored["params"])
        assert (params["steps"], params["subdivisions"], params["seed"]) == (1, 1, stored["seed"])
        full = json.loads(stored["full_params"])
        assert (full["steps"], full["subdivisions"], full["seed"]) == (20, 2, stored["seed"])
        assert full["radius"] == pytest.approx(0.6)
    # Side by side along +X from the 3D cursor, in one new collection, none overlapping.
    assert {tuple(p["collections"]) for p in previews} == {("Hunyuan3D Previews",)}
    assert previews[0]["location"] == pytest.approx([1.0, 2.0, 0.5])
    assert all(p["location"][1:] == pytest.approx([2.0, 0.5]) for p in previews)
    for left, right in zip(previews, previews[1:]):
        assert right["x_range"][0] > left["x_range"][1]

    chosen = previews[1]
    assert "[hy3d.refine]" in facts["panel_preview"] and any("(preview)" in line for line in facts["panel_preview"])
    refined = facts["refined"]
    stored = refined["stored"]
    assert stored["quality"] == "refined" and "full_params" not in stored
    assert stored["seed"] == chosen["stored"]["seed"] and refined["seed_color"] == chosen["seed_color"]
    params = json.loads(stored["params"])
    assert (params["steps"], params["subdivisions"], params["seed"]) == (20, 2, chosen["stored"]["seed"])
    assert refined["vertices"] == 162
    # In front of the preview (towards -Y), not in the previews' collection.
    assert refined["max_y"] < refined["chosen_min_y"] and refined["x"] == pytest.approx(refined["chosen_x"])
    assert refined["collections"] == ["Collection"]
    assert facts["refine_on_refined"] is False

    second = facts["second_batch"]
    assert second["objects"] == 1 and second["collections"] == ["Hunyuan3D Previews.001"]


def test_camera_view_and_image_editor_input_and_generating_into_a_box(addon_zip, tmp_path):
    facts = run_scenario("viewport_input", addon_zip, tmp_path)
    assert {"[hy3d.use_camera_view]", "[hy3d.use_editor_image]", "[into_selected=False]"} <= set(facts["panel"])
    camera = facts["camera_picture"]
    assert camera["size"] == [32, 20]  # 64 x 40 at 50 %
    assert camera["source"] == "IMAGE" and Path(camera["path"]).is_relative_to(tmp_path)
    assert camera["engine_after"] == camera["engine_before"] and camera["transparent_after"] is False
    assert facts["sent_size"] == [32, 20]  # the job's input picture has the camera's render resolution
    assert facts["scene_engine"] == {"size": [32, 20], "engine_after": "CYCLES"}

    def assert_fits(fit):
        (low, high), (box_low, box_high) = np.array(fit["result"]), np.array(fit["box"])
        room, size = box_high - box_low, high - low
        assert np.all(size <= room * 1.01)
        assert np.max(size / room) == pytest.approx(1.0, rel=0.01)  # the largest uniform fit
        assert (low + high)[:2] / 2 == pytest.approx((box_low + box_high)[:2] / 2, abs=0.01 * room.max())  # centred
        assert low[2] == pytest.approx(box_low[2], abs=0.01 * room[2])  # resting on the bottom

    assert_fits(facts["into_box"])
    front = np.array(facts["into_box"]["front"])
    assert front[2] == pytest.approx(0.0, abs=1e-6)
    assert front[:2] == pytest.approx(facts["camera_facing"], abs=1e-5)  # the front faces the camera
    assert facts["into_result"]["poll"] is False and "Into Selected is on" in facts["into_result"]["problem"]
    assert facts["into_result"]["previews_poll"] is True  # previews go in their row, whatever is selected
    assert_fits(facts["into_empty"])
    assert facts["into_empty"]["front"] == pytest.approx([0.0, -1.0, 0.0], abs=1e-6)

    assert facts["painted"]["size"] == [20, 12] and Path(facts["painted"]["path"]).is_relative_to(tmp_path)
    assert facts["loaded_path"] == facts["picture"]
    assert "no Image Editor shows one" in facts["nothing_shown"]
    assert "Can't save the image Gone" in facts["gone"] and "render or load it first" in facts["gone"]
    assert "no active camera" in facts["no_camera"]


def test_preview_and_refine_requests_and_their_recipes(addon_package):
    recipe = importlib.import_module("addon_under_test.recipe")
    session = importlib.import_module("addon_under_test.session")
    pipeline = {"name": "nano", "params": [{"name": "seed", "type": "int", "default": 0},
                                           {"name": "resolution", "type": "int", "default": 128, "preview": 64}]}
    request = session.GenerationRequest("nano", {"seed": 9, "resolution": 256}, image_path="/p/chair.png")
    preview = recipe.as_preview(request, pipeline)
    assert preview.params == {"seed": 9, "resolution": 64} and preview.quality == "preview"
    assert preview.full_params == {"seed": 9, "resolution": 256}
    stored = recipe.to_properties(preview, 9, "0.1.0")
    assert stored["quality"] == "preview" and json.loads(stored["full_params"]) == {"resolution": 256, "seed": 9}
    assert recipe.from_properties(stored) == preview  # Regenerate makes the same preview; it stays refinable
    refined = recipe.refined(recipe.from_properties(stored))
    assert refined.params == {"seed": 9, "resolution": 256} and refined.quality == "refined" and refined.full_params is None
    assert recipe.from_properties(recipe.to_properties(refined, 9, "0.1.0")) == refined
    with pytest.raises(recipe.RecipeError, match="not a preview"):
        recipe.refined(refined)
    with pytest.raises(recipe.RecipeError, match="no quicker preview") as error:
        recipe.as_preview(request, {"name": "nano", "params": [{"name": "seed", "type": "int", "default": 0}]})
    assert "Variations" in error.value.hint
    for damaged in ({**stored, "quality": "draft"}, {**stored, "quality": "full"}, {k: v for k, v in stored.items() if k != "full_params"}):
        with pytest.raises(recipe.RecipeError, match="quality"):
            recipe.from_properties(damaged)


def test_fit_into_box_is_the_largest_centred_fit_resting_on_the_bottom_facing_as_asked(addon_package):
    placement = importlib.import_module("addon_under_test.placement")
    rng = np.random.default_rng(4)
    points = rng.normal(size=(500, 3)) * [0.3, 0.8, 0.5] + [2.0, -1.0, 0.4]
    for _ in range(20):
        angles = rng.uniform(-np.pi, np.pi, 3)
        rx, ry, rz = (np.array(m) for m in (
            [[1, 0, 0], [0, np.cos(angles[0]), -np.sin(angles[0])], [0, np.sin(angles[0]), np.cos(angles[0])]],
            [[np.cos(angles[1]), 0, np.sin(angles[1])], [0, 1, 0], [-np.sin(angles[1]), 0, np.cos(angles[1])]],
            placement.rotation_z(angles[2])))
        rotation, scales = rx @ ry @ rz, rng.uniform(0.2, 3.0, 3)
        box = np.eye(4)
        box[:3, :3], box[:3, 3] = rotation * scales, rng.uniform(-5, 5, 3)
        box_min, box_max = -rng.uniform(0.5, 1.5, 3), rng.uniform(0.5, 1.5, 3)
        direction = rng.normal(size=2)
        facing = tuple(direction / np.linalg.norm(direction))
        matrix = placement.fit_into_box(points, box, box_min, box_max, facing)
        world = points @ matrix[:3, :3].T + matrix[:3, 3]
        in_box = (world - box[:3, 3]) @ rotation  # along the box's axes, in world units
        low, high = in_box.min(axis=0), in_box.max(axis=0)
        room_low, room_high = box_min * scales, box_max * scales
        assert np.all(low >= room_low - 1e-9) and np.all(high <= room_high + 1e-9)
        assert np.max((high - low) / (room_high - room_low)) == pytest.approx(1.0)
        assert (low + high)[:2] == pytest.approx((room_low + room_high)[:2]) and low[2] == pytest.approx(room_low[2])
        scale = np.linalg.norm(matrix[:3, :3], axis=0)
        assert scale == pytest.approx(np.full(3, scale[0]))  # uniform
        front_in_box = rotation.T @ (matrix[:3, :3] @ [0.0, -1.0, 0.0]) / scale[0]
        wanted = rotation.T @ [facing[0], facing[1], 0.0]
        assert front_in_box[2] == pytest.approx(0.0, abs=1e-9)  # turned about the box's up axis only
        assert front_in_box[:2] / np.hypot(*front_in_box[:2]) == pytest.approx(wanted[:2] / np.hypot(*wanted[:2]))
    with pytest.raises(ValueError, match="scale of 0"):
        placement.fit_into_box(points, np.diag([1.0, 0.0, 1.0, 1.0]), -np.ones(3), np.ones(3))
    assert placement.facing_away_from((0.0, 0.0, -1.0)) is None
    assert placement.facing_away_from((0.0, 2.0, -1.0)) == pytest.approx((0.0, -1.0))


def test_finishing_runs_a_step_per_tick_and_gives_the_asked_faces_origin_scale_and_quads(addon_zip, tmp_path):
    facts = run_scenario("finishing", addon_zip, tmp_path)

    # Face budget 3000 on a model with max_faces: the backend decimates (fast-simplification stops at or just
    # below its target), so Blender has nothing left to decimate. The backend makes the LODs too, each with half
    # the faces of the one before (at or just below half), and Blender only imports them.
    backend = facts["budget_backend"]
    assert json.loads(backend["stored"]["params"])["max_faces"] == 3000
    assert 0.98 * 3000 <= backend["imported"]["faces"] <= 3000 and backend["object"]["faces"] == backend["imported"]["faces"]
    faces = backend["object"]["faces"]
    assert [lod["name"] for lod in backend["lods"]] == ["Hunyuan3D_LOD1", "Hunyuan3D_LOD2", "Hunyuan3D_LOD3"]
    assert backend["backend_lods"] == [lod["faces"] for lod in backend["lods"]]
    for before, lod in zip([faces] + [lod["faces"] for lod in backend["lods"]], backend["lods"]):
        assert before // 2 - 4 <= lod["faces"] <= before // 2 and lod["hidden"] and lod["colors"] == ["Color"]
        assert lod["matrix"] == backend["matrix"] and not lod["invalid"]  # in the same place as the result
        # Made from the imported mesh, moved as the scale and origin steps moved the result's: over it in the world.
        assert np.allclose(lod["world"], backend["world"], atol=0.05)
    assert backend["lod_collection_parent"] == "Collection"
    counts = [faces] + [lod["faces"] for lod in backend["lods"]]
    assert backend["outcome"][0] == "done" and f"LODs {'/'.join(map(str, counts))} faces" in backend["outcome"][1]
    assert any(f"LODs {'/'.join(map(str, counts))}" in line for line in backend["panel"])
    # One operation per pump, each shown in the panel while it is next; the import's pump did none.
    assert backend["progress"] == ["[progress] Finishing: apply scale", "[progress] Finishing: decimate",
                                   "[progress] Finishing: origin", "[progress] Finishing: LOD 1 of 3",
                                   "[progress] Finishing: LOD 2 of 3", "[progress] Finishing: LOD 3 of 3", ""]
    # Applied scale: scale 1, the same size; origin at the bottom centre; the mesh stays where it was.
    assert backend["scale"] == [1.0, 1.0, 1.0]
    assert backend["dimensions"] == pytest.approx(backend["dimensions_before"], abs=1e-5)
    assert backend["dimensions_before"] == pytest.approx([2.4, 2.4, 0.6], rel=0.01)  # radius 0.6 at scale (2, 2, 0.5)
    low, high = np.array(backend["local"])
    assert abs(low[2]) <= 1e-5 and np.allclose((low[:2] + high[:2]) / 2, 0, atol=1e-5)
    assert np.allclose(backend["world"], backend["world_before"], atol=1e-5)
    assert not backend["object"]["invalid"] and backend["object"]["smooth"] and backend["orphan_meshes"] == []
    # The options are kept on the object; Load Settings puts them back in the panel.
    assert json.loads(backend["stored"]["finishing"]) == {"face_budget": 3000, "quads": "NONE", "voxel_size": pytest.approx(0.02),
                                                          "lods": 3, "origin_bottom": True, "apply_scale": True}
    assert facts["loaded"] == [3000, 3, True, True, 3000]
    assert facts["options_panel"] == ["[face_budget=0]", "[quads=VOXEL]", "[voxel_size=0.019999999552965164]", "[lods=3]",
                                      "[origin_bottom=False]", "[apply_scale=False]"]

    # A model without max_faces: Blender's Decimate modifier meets the budget (80 -> 40 triangles, within 2).
    blender = facts["budget_blender"]
    assert blender["imported"]["faces"] == 80 and abs(blender["object"]["faces"] - 40) <= 2
    # Blender makes the LODs from the mesh it decimated (Blender's collapse decimation: within 2 of half).
    assert [lod["faces"] for lod in blender["lods"]] == [20, 10] and blender["backend_lods"] == []
    assert "finishing" in blender["stored"] and json.loads(blender["stored"]["params"]) == {"seed": 0}

    # Voxel remesh gives quads and keeps the colours and the material; its LOD halves its triangles.
    voxel = facts["voxel"]
    assert voxel["corners"] == [4] and voxel["colors"] == ["Color"] and voxel["materials"] == ["Hunyuan3D Vertex Colour"]
    assert abs(voxel["lods"][0]["faces"] - voxel["object"]["faces"]) <= 2  # 2 triangles per quad, halved
    assert voxel["backend_lods"] == []  # made in Blender from the quads
    assert voxel["outcome"][1].endswith(f"LODs {2 * voxel['object']['faces']}/{voxel['lods'][0]['faces']} triangles")

    # QuadriFlow gives quads (it aims at half the triangles, 160 here, and does not promise the count). One edge was
    # shortened to 5e-5 first, as marching cubes leaves them: Blender's QuadriFlow refuses such a mesh unless the
    # finishing merges those vertices first.
    quadriflow = facts["quadriflow"]
    assert quadriflow["corners"] == [4] and quadriflow["colors"] == ["Color"] and quadriflow["outcome"][0] == "done"
    assert 80 <= quadriflow["object"]["faces"] <= 320

    # QuadriFlow refusing a mesh (one face flipped): the error in the panel, the object as it was before finishing
    # (its scale not applied, its mesh the imported one) and no LOD copies.
    refused = facts["refused"]
    kind, message, hint = refused["outcome"]
    assert kind == "error" and "failed at QuadriFlow remesh" in message and "manifold" in message and "Voxel" in hint
    assert refused["matrix"] == refused["matrix_before"] and refused["world"] == refused["world_before"]
    assert refused["object"] == refused["imported"] and refused["lods"] is None and refused["orphan_meshes"] == []

    # Cancel after two steps (scale applied, one LOD imported from the backend's): put back as it was, its LOD copy removed.
    cancelled = facts["cancelled"]
    assert len(cancelled["backend_lods"]) == 3
    assert cancelled["cancel_button"] and cancelled["cancel"] == ["FINISHED"]
    assert cancelled["progress"][:3] == ["[progress] Finishing: apply scale", "[progress] Finishing: LOD 1 of 3",
                                         "[progress] Finishing: LOD 2 of 3"]
    assert cancelled["outcome"][0] == "cancelled" and "left as it was" in cancelled["outcome"][1]
    assert cancelled["matrix"] == cancelled["matrix_before"] and cancelled["object"] == cancelled["imported"]
    assert cancelled["lods"] is None and cancelled["orphan_meshes"] == []


def test_the_backends_lods_are_read_level_by_level_in_blenders_frame(addon_package):
    meshdata = importlib.import_module("addon_under_test.meshdata")
    square = {"positions": np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32),
              "faces": np.array([[0, 1, 2], [0, 2, 3]], np.int32)}
    wire = {"positions": square["positions"], "faces": square["faces"], "lod1.positions": square["positions"] * 2,
            "lod1.faces": square["faces"][:1], "lod1.colors": np.full((4, 4), 255, np.uint8)}
    (lod,) = meshdata.lods_from_wire(wire, 1, "y_up")
    assert lod.face_count == 1 and lod.colors.dtype == np.float32 and np.allclose(lod.colors, 1.0)
    assert np.array_equal(lod.positions[2], [2.0, 0.0, 2.0])  # (x, y, z) -> (x, -z, y), as the result's
    assert meshdata.lods_from_wire(wire, 0) == ()
    with pytest.raises(KeyError):  # a level the header announces but the buffers lack: the result is unreadable
        meshdata.lods_from_wire(wire, 2)


def test_finishing_options_check_their_values_travel_in_the_recipe_and_hand_the_budget_to_max_faces(addon_package):
    options = importlib.import_module("addon_under_test.finishing_options")
    recipe = importlib.import_module("addon_under_test.recipe")
    session = importlib.import_module("addon_under_test.session")
    finishing = options.FinishingOptions(face_budget=3000, quads="VOXEL", voxel_size=0.05, lods=2, origin_bottom=True, apply_scale=True)
    assert finishing.step_names() == ["apply scale", "decimate", "voxel remesh", "origin", "LOD 1 of 2", "LOD 2 of 2"]
    assert options.FinishingOptions(face_budget=3000, quads="QUADRIFLOW").step_names() == ["QuadriFlow remesh"]
    assert not options.FinishingOptions(voxel_size=0.5).active and finishing.active

    # The budget goes to a model's own max_faces (never raising it); QuadriFlow keeps the model's full mesh.
    assert finishing.backend_params({"seed": 1, "max_faces": 120000}) == {"seed": 1, "max_faces": 3000}
    assert finishing.backend_params({"max_faces": 2000}) == {"max_faces": 2000}
    assert finishing.backend_params({"seed": 1}) == {"seed": 1}
    assert options.FinishingOptions(face_budget=3000, quads="QUADRIFLOW").backend_params({"max_faces": 9000}) == {"max_faces": 9000}
    # The backend makes the LODs when Blender keeps its mesh's shape: no quads, the budget (if any) spent by max_faces.
    assert options.FinishingOptions(lods=3).backend_lods({"seed": 1}) == 3
    assert options.FinishingOptions(face_budget=3000, lods=3).backend_lods({"max_faces": 3000}) == 3
    assert options.FinishingOptions(face_budget=3000, lods=3).backend_lods({"seed": 1}) == 0
    assert options.FinishingOptions(quads="VOXEL", lods=3).backend_lods({"max_faces": 3000}) == 0
    assert options.FinishingOptions(lods=3).backend_lods({"max_faces": 3000, "texture": True}) == 0  # Blender keeps the UVs
    assert finishing.backend_lods({"max_faces": 3000}) == 0

    request = session.GenerationRequest("nano", {"seed": 0}, image_path="/p/mug.png", finishing=finishing)
    stored = recipe.to_properties(request, 0, "0.1.0")
    assert recipe.from_properties(stored) == request
    assert "finishing" not in recipe.to_properties(session.GenerationRequest("nano", {"seed": 0}, image_path="/p/mug.png"), 0, "")

    for values, why in (({"face_budget": -5}, "face budget"), ({"quads": "TRIS"}, "Unknown quad remesh"),
                        ({"voxel_size": 0.0}, "voxel size"), ({"lods": 9}, "LODs must be 0 to 8")):
        with pytest.raises(options.FinishingError, match=why):
            options.FinishingOptions(**values)
    for text in ("{not json", "[1]", '{"lods": 2, "colour": "red"}', '{"lods": 99}'):
        with pytest.raises(options.FinishingError, match="damaged") as error:
            recipe.from_properties({**stored, "finishing": text})
        assert "Finishing" in error.value.hint


def test_texture_selected_paints_the_evaluated_mesh_in_its_place(addon_zip, tmp_path):
    from paint_fixtures import write_tiny_paint_weights

    weights = tmp_path / "weights"
    write_tiny_paint_weights(weights, turbo=True)
    facts = run_scenario("texture_selected", addon_zip, tmp_path / "run", weights=str(weights))
    assert "hunyuan3d-2-paint" not in facts["models"], "the paint pipeline is reached through Texture Selected, not Generate"
    assert facts["nothing_selected"] == {"poll": False, "problem": "Select the mesh object to texture"}
    cube, result = facts["cube"], facts["result"]
    # The modifier's output, cut into triangles: a once-subdivided cube has 24 quads.
    assert cube["triangles"] == result["faces"] == 48 and not result["invalid"]
    assert np.allclose(result["matrix"], cube["matrix"], atol=1e-6), "the painted copy takes the original's transform"
    assert np.allclose(result["world_min"], cube["world_min"], atol=1e-5) and np.allclose(result["world_max"], cube["world_max"], atol=1e-5)
    assert result["uv_layers"] == ["UVMap"] and result["color_attributes"] == 0
    assert result["images"] == [[[128, 128], True, "sRGB"]] and result["base_color_linked"] == ["ShaderNodeTexImage"]
    assert result["original_hidden"] == [True, True] and not result["recipe"]
    # The delit picture and the four painted views, packed, to look at in the Image Editor.
    assert result["pictures"] == [[f"Cube Textured {name}", [512, 512], True] for name in ("delit", "view 0", "view 1", "view 2", "view 3")]
    assert result["name"] == "Cube Textured" and result["label"].startswith("Cube from mug.png (hunyuan3d-2-paint")
    # The History folds out to those pictures: a preview of each, made on arrival, and a button that shows it.
    titles = ["delit", "view 0", "view 1", "view 2", "view 3"]
    picture_rows = [line for title in titles for line in ("[preview]", title, "[hy3d.show_picture: Show]")]
    assert facts["history"] == ["[fold-out closed]", result["label"], "[hy3d.import_result]", *picture_rows]
    assert facts["previews"] == [True] * len(titles)
    assert "No Image Editor is open" in facts["no_image_editor"] and "change an area to an Image Editor" in facts["no_image_editor"]
    assert facts["shown"] == {"result": ["FINISHED"], "image": "Cube Textured delit"}
    assert facts["gone_drawn"] == "view 3: not in this file (import the result again)"
    assert "'Cube Textured view 3' is no longer in this file" in facts["gone_shown"] and "import the result again" in facts["gone_shown"]
    assert facts["after_undo"] == {"objects": ["Camera", "Cube", "Light"], "cube_hidden": False}, "one undo step takes it all back"
