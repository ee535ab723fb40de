"""The Blender add-on in real Blender (the bpy wheel) against a real backend process.

The zip comes from build.py and is installed through Blender's extension machinery; every
scenario runs in its own Blender process (see addon_support and blender_scenarios).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from addon_support import ROOT, build_zip, run_scenario
from fixture_pipelines import icosphere

# bpy itself is imported only in the scenario processes, never in the test process.
pytestmark = pytest.mark.skipif(find_spec("bpy") is None, reason="needs the bpy wheel (Python 3.11)")


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    return build_zip(tmp_path_factory.mktemp("dist"))


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
    assert "Shape 6/12" in facts["progress"] and facts["progress"][-1] == "Shape 12/12"
    assert facts["outcome"].startswith(obj["name"]) and "642 vertices" in facts["outcome"]
    assert facts["history"] == ["input.png (test-shape, seed 7)"]
    assert Path(facts["saved"]["glb"]).is_file() and Path(facts["saved"]["glb"]).is_relative_to(tmp_path)
    again = facts["reimported"]
    assert again["name"] != obj["name"] and again["vertices"] == 642
    assert again["location"] == pytest.approx([0.0, 0.0, 3.0])


def test_cancel_stops_the_job_and_the_backend_keeps_working(addon_zip, tmp_path):
    facts = run_scenario("cancel", addon_zip, tmp_path)
    assert facts["outcome"] == ["cancelled", "Cancelled during shape"]
    assert facts["objects_added"] == 0 and facts["phase"] == "ready"
    assert facts["after"] == ["result", 1]


def test_killed_backend_gives_a_clear_error_and_restart_works(addon_zip, tmp_path):
    facts = run_scenario("backend_killed", addon_zip, tmp_path)
    kind, message, hint = facts["outcome"]
    assert kind == "error" and "backend stopped" in message and "Restart" in hint
    assert facts["phase"] == "failed" and "exit code" in facts["problem"][0]
    assert facts["second_pid_differs"] and facts["after_restart"] == "result"


def test_a_frozen_backend_is_flagged_and_recovers(addon_zip, tmp_path):
    facts = run_scenario("frozen_backend", addon_zip, tmp_path)
    assert facts == {"flagged": True, "phase_while_frozen": "ready", "recovered_phase": "ready"}


def test_disabling_mid_job_leaves_nothing_running(addon_zip, tmp_path):
    facts = run_scenario("disable", addon_zip, tmp_path)
    assert not facts["enabled"] and not facts["hy3d_registered"]
    assert not facts["timer"]
    assert facts["threads"] == [] and not facts["session_threads"]
    assert facts["sockets"] == 0
    assert not facts["backend_alive"]
    assert facts["reenabled"] == "ready"


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


def test_the_same_zip_installs_as_a_legacy_add_on(addon_zip, tmp_path):
    facts = run_scenario("legacy", addon_zip, tmp_path)
    assert facts["install"] == ["FINISHED"] and facts["enabled"] and facts["generate_operator"]
    assert Path(facts["protocol_file"]).parent.parent.name == "hunyuan3d_blender"
