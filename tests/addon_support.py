"""Helpers for the add-on tests: build the zip with build.py and run scenarios in a fresh Blender.

Each scenario runs in its own process (``tests/blender_scenarios.py``) because bpy can be
imported once per process and its user folders must point at a temporary place before that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
RESULT_PREFIX = "SCENARIO-RESULT "


def build_zip(output_dir: Path) -> Path:
    done = subprocess.run([sys.executable, str(ROOT / "build.py"), "--output-dir", str(output_dir)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def run_scenario(name: str, zip_path: Path, workdir: Path, **options) -> dict:
    """Run ``name`` from blender_scenarios.py in a new process; returns the facts it reports."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    env["BLENDER_USER_RESOURCES"] = str(workdir / "blender-user")
    env["HY3D_HOME"] = str(workdir / "hy3d-home")
    config = {"zip": str(zip_path), "workdir": str(workdir), "tests": str(TESTS), **options}
    # -X faulthandler: a crash inside Blender's native code prints every thread's Python stack.
    done = subprocess.run([sys.executable, "-X", "faulthandler", str(TESTS / "blender_scenarios.py"), name, json.dumps(config)],
                          check=False, capture_output=True, text=True, timeout=150, env=env, cwd=workdir)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert done.returncode == 0 and lines, (f"scenario {name} failed (exit status {done.returncode}):\n"
                                            f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])
