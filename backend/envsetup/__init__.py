"""The backend's own Python environment, created with the torch build that fits the machine. Stdlib only.

``python -m backend setup-env DIR`` (and the add-on's "Set up backend" button) make a virtual
environment in DIR with any Python 3.10+ (Blender's own included), install torch from the
index that has the right build, then the backend's other requirements, make the bundled
``backend`` package importable there and finish by running ``doctor`` inside it.

Every finished step leaves a fingerprint in DIR/hy3d-setup/state.json, so running it again
skips what is done, reinstalls a step that was cut short, and redoes a step whose plan
changed (another torch build, say). Nothing here imports more than the standard library:
Blender's Python runs this package before any of the heavy packages exist.

The work is split by concern: ``machine`` looks at the hardware, ``builds`` picks the torch
build, ``plan`` decides every step, ``run`` carries the plan out (with ``pip_output`` turning
pip's lines into progress), ``cli`` is the ``setup-env`` command.
"""

from .builds import CUDA_BUILDS, TORCH_CHOICES, TORCH_VERSION, TorchBuild, choose_torch
from .cli import add_setup_env_parser, cmd_setup_env
from .errors import SetupCancelled, SetupError
from .machine import Machine, parse_nvidia_smi, probe_machine
from .pip_output import parse_pip_line
from .plan import (
    LOG_NAME,
    REPORT_NAME,
    STATE_DIR,
    STATE_NAME,
    Plan,
    Step,
    make_plan,
    read_requirements,
    requirement_name,
    venv_python,
)
from .run import Progress, Report, Setup, read_report, remove_environment

__all__ = [
    "CUDA_BUILDS", "LOG_NAME", "REPORT_NAME", "STATE_DIR", "STATE_NAME", "TORCH_CHOICES", "TORCH_VERSION", "Machine", "Plan",
    "Progress", "Report", "Setup", "SetupCancelled", "SetupError", "Step", "TorchBuild", "add_setup_env_parser", "choose_torch",
    "cmd_setup_env", "make_plan", "parse_nvidia_smi", "parse_pip_line", "probe_machine", "read_report", "read_requirements",
    "remove_environment", "requirement_name", "venv_python",
]
