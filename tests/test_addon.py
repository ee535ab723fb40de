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
    assert facts["after_undo"] == {"objects": ["Camera", "Cube", "Light"], "cube_hidden": False}, "one undo step takes it all back"
