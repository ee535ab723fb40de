"""setup-env: the torch build chosen for faked machines, the plan, offline refusal, and a real environment."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from backend import envsetup
from backend.envsetup import Machine, Setup, SetupCancelled, SetupError, choose_torch, make_plan

REPO = Path(__file__).resolve().parents[1]
LINUX = Machine("Linux", "x86_64")


def nvidia(driver: str, system: str = "Linux") -> Machine:
    return Machine(system, "x86_64", driver, ("NVIDIA GeForce RTX 4090",))


@pytest.mark.parametrize(("driver", "system", "build"), [
    ("580.65.06", "Linux", "cu128"),
    ("570.26", "Linux", "cu128"),
    ("570.25", "Linux", "cu126"),
    ("560.35.03", "Linux", "cu126"),
    ("555.42.02", "Linux", "cu124"),
    ("550.54.13", "Linux", "cu121"),
    ("535.183.01", "Linux", "cu121"),
    ("525.147.05", "Linux", "cu118"),
    ("570.65", "Windows", "cu128"),
    ("566.36", "Windows", "cu126"),
    ("560.70", "Windows", "cu124"),
    ("531.14", "Windows", "cu121"),
])
def test_the_cuda_build_follows_the_driver(driver, system, build):
    chosen = choose_torch(nvidia(driver, system))
    assert chosen.variant == build
    assert chosen.index_url == f"https://download.pytorch.org/whl/{build}"
    assert driver in chosen.reason


def test_a_driver_too_old_for_every_cuda_build_gets_the_cpu_build_with_the_reason():
    chosen = choose_torch(nvidia("470.256.02"))
    assert chosen.variant == "cpu" and "470.256.02" in chosen.reason and "update" in chosen.reason
    with pytest.raises(SetupError, match="too old"):
        choose_torch(nvidia("470.256.02"), "cuda")


def test_apple_silicon_gets_the_default_build_and_other_machines_the_cpu_build():
    mac = choose_torch(Machine("Darwin", "arm64"))
    assert (mac.variant, mac.index_url) == ("mps", None)
    intel_mac = choose_torch(Machine("Darwin", "x86_64"))
    assert (intel_mac.variant, intel_mac.index_url) == ("cpu", None)
    linux = choose_torch(LINUX)
    assert (linux.variant, linux.index_url) == ("cpu", "https://download.pytorch.org/whl/cpu")
    windows = choose_torch(Machine("Windows", "amd64"))
    assert (windows.variant, windows.index_url) == ("cpu", None)
    rocm = choose_torch(Machine("Linux", "x86_64", rocm=True))
    assert rocm.variant.startswith("rocm") and rocm.index_url.endswith(rocm.variant)


def test_the_user_overrides_the_choice_within_what_the_machine_can_run():
    assert choose_torch(nvidia("570.86.10"), "cpu").variant == "cpu"
    assert choose_torch(LINUX, "cuda").variant == "cu128"
    for machine, asked in ((LINUX, "mps"), (Machine("Darwin", "arm64"), "cuda"), (Machine("Windows", "amd64"), "rocm")):
        with pytest.raises(SetupError):
            choose_torch(machine, asked)
    with pytest.raises(SetupError, match="unknown torch build"):
        choose_torch(LINUX, "cu999")


def test_the_probe_reads_nvidia_smi_and_takes_the_oldest_driver():
    outputs = {"nvidia-smi": "550.54.14, NVIDIA H100 80GB HBM3\n545.23.08, NVIDIA RTX A6000\n"}

    def run(command):
        return outputs.get(command[0])

    machine = envsetup.probe_machine(run, system="Linux", arch="x86_64", rocm_paths=())
    assert machine.nvidia_driver == "545.23.08"
    assert machine.gpus == ("NVIDIA H100 80GB HBM3", "NVIDIA RTX A6000")
    assert not machine.rocm and choose_torch(machine).variant == "cu121"
    bare = envsetup.probe_machine(lambda command: None, system="Linux", arch="aarch64", rocm_paths=())
    assert bare == Machine("Linux", "aarch64")
    amd = envsetup.probe_machine(lambda command: "Agent 1\n" if command[0] == "rocminfo" else None, system="Linux",
                                 arch="x86_64", rocm_paths=())
    assert amd.rocm


def test_the_plan_pins_torch_and_lists_the_backend_requirements(tmp_path):
    plan = make_plan(tmp_path / "env", machine=nvidia("570.86.10"))
    listed = envsetup.read_requirements()
    assert "torch" in {envsetup.requirement_name(r) for r in listed}
    assert list(plan.requirements) == [r for r in listed if envsetup.requirement_name(r) != "torch"]
    assert plan.torch_requirement == f"torch=={envsetup.TORCH_VERSION}+cu128"
    steps = {step.name: step for step in plan.steps()}
    assert list(steps) == ["environment", "torch", "requirements", "backend", "check"]
    assert steps["environment"].command == (sys.executable, "-m", "venv", str(tmp_path / "env"))
    torch_step = steps["torch"].command
    assert torch_step[torch_step.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu128"
    assert torch_step[-1] == plan.torch_requirement
    assert "--index-url" not in steps["requirements"].command and plan.torch_requirement in steps["requirements"].command
    assert plan.backend_root == REPO

    default_index = make_plan(tmp_path / "env", "cpu", index="default", machine=LINUX)
    assert default_index.torch_requirement == f"torch=={envsetup.TORCH_VERSION}"
    assert "--index-url" not in default_index.steps()[1].command

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    offline = make_plan(tmp_path / "env", machine=LINUX, wheels_dir=wheels)
    for step in offline.steps()[1:3]:
        assert {"--no-index", "--isolated"} <= set(step.command) and str(wheels) in step.command
        assert "--index-url" not in step.command
    with pytest.raises(SetupError, match="wheels folder not found"):
        make_plan(tmp_path / "env", machine=LINUX, wheels_dir=tmp_path / "nowhere")


def test_pyproject_reads_its_dependencies_from_the_bundled_list():
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["dependencies"]' in pyproject and '"backend/requirements.txt"' in pyproject


def test_dry_run_works_in_a_python_with_only_the_standard_library(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = envsetup.venv_python(bare)
    done = subprocess.run([str(python), "-m", "backend", "setup-env", str(tmp_path / "env"), "--torch", "cuda", "--dry-run"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"interpreter:  {python}" in out
    assert f"torch==2.13.0+{envsetup.CUDA_BUILDS[0].tag}" in out and "https://download.pytorch.org/whl/" in out
    assert "numpy>=1.26" in out and "-m pip install" in out
    assert not (tmp_path / "env").exists()


def test_offline_refuses_to_download_before_touching_anything(tmp_path):
    plan = make_plan(tmp_path / "env", "cpu", machine=LINUX)
    with pytest.raises(SetupError) as caught:
        Setup(plan, allow_online=False).run()
    assert "Online access is off" in caught.value.message
    assert "Allow Online Access" in caught.value.hint and "wheels" in caught.value.hint
    assert not (tmp_path / "env").exists()


def test_an_empty_wheels_folder_fails_at_torch_with_the_log_named(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    seen = []
    plan = make_plan(tmp_path / "env", "cpu", machine=LINUX, wheels_dir=wheels)
    with pytest.raises(SetupError) as caught:
        Setup(plan, on_progress=seen.append, allow_online=False).run()
    assert caught.value.message.startswith("Installing torch") and "torch==2.13.0" in caught.value.message
    assert str(plan.log_path) in caught.value.hint and "wheels folder" in caught.value.hint
    assert "No matching distribution" in plan.log_path.read_text()
    assert [p.step for p in seen][:2] == ["environment", "torch"]
    assert envsetup.read_report(plan.env_dir) is None
    state = json.loads((plan.state_dir / "state.json").read_text())
    assert list(state["done"]) == ["environment"] and state["running"] == "torch"


def test_pip_lines_become_progress_messages():
    assert envsetup.parse_pip_line("Collecting numpy>=1.24") == ("collecting numpy", 0.1)
    assert envsetup.parse_pip_line("  Downloading https://x/torch-2.13.0%2Bcu128-cp311-cp311-linux_x86_64.whl (900.1 MB)") == (
        "downloading torch 2.13.0%2Bcu128 (900.1 MB)", 0.2)
    assert envsetup.parse_pip_line("Installing collected packages: numpy, torch") == ("installing 2 packages", 0.6)
    assert envsetup.parse_pip_line("  Using cached foo") is None


def test_remove_refuses_a_folder_setup_env_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SetupError, match="not made by setup-env"):
        envsetup.remove_environment(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()
    with pytest.raises(SetupError, match="already holds other files"):
        Setup(make_plan(tmp_path / "mine", "cpu", machine=LINUX, wheels_dir=tmp_path)).run()


@pytest.mark.slow
def test_a_real_cpu_environment_resumes_after_an_interruption_and_passes_doctor(tmp_path):
    """Installs torch 2.13.0 (CPU) and the requirements from pip's configured index into a new venv."""
    env_dir = tmp_path / "env"
    plan = make_plan(env_dir, "cpu", index="default")
    first: list = []

    def interrupt_torch(progress) -> None:
        first.append(progress)
        if progress.step == "torch" and ": " in progress.message:  # pip is running and has said something
            threading.Thread(target=setup.cancel).start()

    setup = Setup(plan, on_progress=interrupt_torch)
    with pytest.raises(SetupCancelled):
        setup.run()
    assert envsetup.read_report(env_dir) is None
    assert "cancelled" in plan.log_path.read_text()

    resumed: list = []
    report = Setup(plan, on_progress=resumed.append).run()
    messages = [p.message for p in resumed]
    assert "Creating the environment: already done" in messages
    assert any(m.startswith("Installing torch 2.13.0 (cpu) (repairing)") for m in messages)
    assert resumed[-1].fraction == 1.0 and all(a.fraction <= b.fraction for a, b in itertools.pairwise(resumed))
    assert report.torch_version.startswith("2.13.0") and report.python == str(plan.python)
    assert report.device_line.startswith("cpu") and "float32" in report.device_line
    assert envsetup.read_report(env_dir) == report

    imported = subprocess.run([str(plan.python), "-c", "import backend, torch; print(backend.__file__, torch.__version__)"],
                              cwd=tmp_path, capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items()
                                                                                              if k != "PYTHONPATH"})
    where, torch_version = imported.stdout.split()
    assert Path(where) == REPO / "backend" / "__init__.py" and torch_version == report.torch_version

    again: list = []
    Setup(plan, on_progress=again.append).run()
    skipped = {p.step for p in again if p.message.endswith("already done")}
    assert skipped == {"environment", "torch", "requirements", "backend"}

    envsetup.remove_environment(env_dir)
    assert not env_dir.exists()
