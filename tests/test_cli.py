import io
import json
import subprocess
import sys

import pytest
import trimesh
from conftest import REPO, backend_env


def run_cli(tmp_path, *args, timeout=120, extra_env=None):
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True,
                          env={**backend_env(tmp_path), **(extra_env or {})}, timeout=timeout)


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_generate_writes_the_mesh(tmp_path, suffix):
    out = tmp_path / f"ball{suffix}"
    proc = run_cli(tmp_path, "generate", "--pipelines-from", "fixture_pipelines", "--model", "test-shape",
                   "--text", "a ball", "--steps", "3", "--seed", "5", "--set", "radius=0.25", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr and "shape" in proc.stderr
    mesh = trimesh.load(io.BytesIO(out.read_bytes()), file_type=suffix[1:], force="mesh", process=False)
    assert len(mesh.faces) == 320
    assert abs(mesh.vertices.max() - 0.25) < 1e-3


def test_generate_from_an_image(tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGBA", (16, 16), (0, 200, 0, 255)).save(image)
    proc = run_cli(tmp_path, "generate", "--pipelines-from", "fixture_pipelines", "--model", "test-shape",
                   "--image", str(image), "-o", str(tmp_path / "out.glb"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "test-shape", "--text", "x", "-o", "out.stl"], "unknown mesh format"),
        (["--model", "test-shape", "--image", "missing.png", "-o", "out.glb"], "no such file"),
        (["--model", "nope", "--text", "x", "-o", "out.glb"], "no pipeline named 'nope'"),
        (["--model", "test-shape", "--text", "x", "--set", "steps=0", "-o", "out.glb"], "outside"),
        (["--model", "test-shape", "--text", "x", "--set", "colour=red", "-o", "out.glb"], "no parameter 'colour'"),
        (["--model", "test-shape", "-o", "out.glb"], "needs image or text"),
        (["--model", "test-shape", "--text", "x", "--set", "fail_at_step=0", "-o", "out.glb"], "failing at step 0"),
        (["--text", "x", "-o", "out.glb"], "no model that takes text has its weights present"),
    ],
)
def test_generate_errors_are_one_clear_line(tmp_path, args, expected):
    proc = run_cli(tmp_path, "generate", "--pipelines-from", "fixture_pipelines", *args)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.glb").exists()


def test_unknown_plugin_module_is_a_clear_error(tmp_path):
    proc = run_cli(tmp_path, "doctor", "--pipelines-from", "no_such_module_here")
    assert proc.returncode == 1 and "cannot import pipeline module" in proc.stderr


def test_doctor_json_reports_devices_and_pipelines(tmp_path):
    proc = run_cli(tmp_path, "doctor", "--json", "--pipelines-from", "fixture_pipelines")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"]["protocol"] == 1
    assert any(dev["kind"] == "cpu" for dev in report["devices"])
    assert "test-shape" in [p["name"] for p in report["pipelines"]]
    assert report["memory"]


def test_doctor_text(tmp_path):
    proc = run_cli(tmp_path, "doctor", "--pipelines-from", "fixture_pipelines")
    assert proc.returncode == 0, proc.stderr
    assert "Devices:" in proc.stdout and "test-shape" in proc.stdout
    assert "hunyuan3d-1-std        missing: tencent/Hunyuan3D-1: mvd_std/, svrm/ (" in proc.stdout
    assert 'get it with: hf download tencent/Hunyuan3D-1 --include "mvd_std/*" "svrm/*"' in proc.stdout


def test_download_shows_the_licence_and_needs_agreement_once(tmp_path):
    env = {"HF_HUB_OFFLINE": "1"}  # nothing may go online: an agreed download fails at the hub instead
    refused = run_cli(tmp_path, "download", "hunyuan3d-1-svrm", "--weights", str(tmp_path / "w"), extra_env=env)
    assert refused.returncode == 1
    notice = "hunyuan3d-1-svrm weights are under the Tencent Hunyuan Non-Commercial License "
    notice += "(https://huggingface.co/tencent/Hunyuan3D-1/blob/main/LICENSE.txt). "
    notice += "It does not apply in the European Union, the United Kingdom and South Korea"
    assert notice in refused.stderr
    assert "error: downloading hunyuan3d-1-svrm needs your agreement to the Tencent Hunyuan Non-Commercial License" in refused.stderr
    assert "--accept-license" in refused.stderr and "downloading tencent" not in refused.stderr
    assert not (tmp_path / "accepted-licences.json").exists() and not (tmp_path / "w").exists()

    agreed = run_cli(tmp_path, "download", "hunyuan3d-1-svrm", "--weights", str(tmp_path / "w"), "--accept-license", extra_env=env)
    assert agreed.returncode == 1 and notice in agreed.stderr and "downloading tencent/Hunyuan3D-1" in agreed.stderr
    assert json.loads((tmp_path / "accepted-licences.json").read_text()) == {"accepted": ["Tencent Hunyuan Non-Commercial License"]}

    # Remembered: no notice, no question; another model under the same licence needs none either.
    again = run_cli(tmp_path, "download", "hunyuan3d-1-lite", "--weights", str(tmp_path / "w"), extra_env=env)
    assert again.returncode == 1 and "downloading tencent/Hunyuan3D-1" in again.stderr and "License" not in again.stderr
    # HunyuanDiT's licence is another one: asked for separately.
    other = run_cli(tmp_path, "download", "hunyuandit", extra_env=env)
    assert other.returncode == 1 and "Tencent Hunyuan Community License" in other.stderr and "--accept-license" in other.stderr


def test_an_interactive_yes_is_remembered_and_nano_needs_no_agreement(tmp_path, monkeypatch):
    from backend.errors import BackendError
    from backend.licences import accepted, licences_for, require_agreement

    monkeypatch.setenv("HY3D_HOME", str(tmp_path))
    shown, asked = [], []
    with pytest.raises(BackendError, match="needs your agreement"):
        require_agreement("hunyuandit", False, ask=lambda question: asked.append(question) or "n\n", say=shown.append)
    assert accepted() == set() and len(asked) == 1
    require_agreement("hunyuandit", False, ask=lambda question: asked.append(question) or "yes\n", say=shown.append)
    assert accepted() == {"Tencent Hunyuan Community License"} and asked[-1] == "Do you agree to these terms? [y/N] "
    assert "South Korea" in shown[-1] and "HunyuanDiT-v1.1-Diffusers-Distilled/blob/main/LICENSE.txt" in shown[-1]
    require_agreement("hunyuandit", False, ask=None, say=shown.append)  # remembered: nothing asked, nothing shown
    assert len(asked) == 2 and len(shown) == 2
    assert licences_for("nano") == []
    require_agreement("nano", False, ask=None, say=shown.append)


@pytest.mark.parametrize("command", [[], ["serve"], ["generate"], ["plan"], ["doctor"], ["download"]])
def test_every_command_has_help(tmp_path, command):
    proc = run_cli(tmp_path, *command, "--help")
    assert proc.returncode == 0 and "usage: python -m backend" in proc.stdout


def test_plan_prints_the_figures_then_the_time_once_generate_has_run(tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes((REPO / "examples" / "snowman.png").read_bytes())
    before = run_cli(tmp_path, "plan", "--model", "nano", "--image", str(image), "--set", "resolution=48")
    assert before.returncode == 0, before.stderr
    lines = before.stdout.splitlines()
    assert lines[0] == "model: nano on cpu" and lines[1].startswith("memory: cpu mode (")
    assert lines[2].startswith("host memory: ~") and "available of" in lines[2]
    assert lines[-1] == "time: unknown (nano has not run on cpu yet; the first job's time is recorded for the next plans)"
    made = run_cli(tmp_path, "generate", "--model", "nano", "--image", str(image), "--set", "resolution=48", "-o", str(tmp_path / "out.glb"))
    assert made.returncode == 0, made.stderr
    after = run_cli(tmp_path, "plan", "--model", "nano", "--image", str(image), "--set", "resolution=96", "--json")
    plan = json.loads(after.stdout)
    assert plan["params"]["resolution"] == 96 and plan["time"]["scaled"] == {"mesh": "resolution 48 -> 96 (time ~ resolution^2.5)"}


def test_model_auto_picks_nano_for_a_picture_when_no_hunyuan3d_weights_are_present(tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    picture = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    picture.paste((200, 60, 60, 255), (16, 16, 48, 48))
    picture.save(image)
    proc = run_cli(tmp_path, "generate", "--image", str(image), "--set", "resolution=48", "-o", str(tmp_path / "out.glb"))
    assert proc.returncode == 0, proc.stderr
    assert "model: nano (picked by --model auto" in proc.stderr
    assert (tmp_path / "out.glb").read_bytes()[:4] == b"glTF"
