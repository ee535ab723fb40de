"""Add-on preferences: how to reach the backend and how it should run. Settings and the token live here only."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import app, downloads, launcher
from .backend import envsetup
from .backend.memory.manager import MODE_HELP
from .connection import ConnectionSettings
from .downloads import DownloadError, DownloadRequest
from .environment import SetupRequest
from .panels import draw_outcome
from .session import Phase
from .status_text import device_summary

MEMORY_MODES = tuple((mode, mode.capitalize() if mode != "cpu" else "CPU", help) for mode, help in MODE_HELP.items())

TORCH_BUILDS = (
    ("auto", "Automatic", "CUDA build matching the NVIDIA driver, the default build on Apple Silicon, else the CPU build"),
    ("cuda", "CUDA", "NVIDIA GPUs: the newest CUDA build the installed driver runs"),
    ("rocm", "ROCm", "AMD GPUs on Linux"),
    ("mps", "Apple (MPS)", "Apple Silicon Macs"),
    ("cpu", "CPU", "No GPU: the small CPU-only build"),
)
ENVIRONMENT_FOLDER = "backend-env"


class HY3D_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    connection: EnumProperty(
        name="Backend",
        items=(("LAUNCH", "Launch Bundled Backend", "Start the backend that ships inside this add-on with a Python that has torch"),
               ("ATTACH", "Attach to Running Backend", "Connect to a backend already running at host:port")),
    )
    python_path: StringProperty(name="Existing Python", subtype="FILE_PATH",
                                description="Python of an environment you made, with torch and the backend's requirements "
                                            "(empty: the environment Set Up Backend makes)")
    torch_build: EnumProperty(name="Torch Build", items=TORCH_BUILDS,
                              description="Which PyTorch build Set Up Backend installs")
    env_dir: StringProperty(name="Environment Folder", subtype="DIR_PATH",
                            description="Where Set Up Backend makes the environment (empty: the add-on's user folder). "
                                        "On Windows a short path such as C:\\hy3d-env avoids path-length limits")
    wheels_dir: StringProperty(name="Offline Wheels", subtype="DIR_PATH",
                               description="Install only from this folder of wheels, downloading nothing (see docs/setup.md)")
    extra_args: StringProperty(name="Extra Arguments",
                               description="More options for 'python -m backend serve', e.g. --pipelines-from my_module")
    extra_pythonpath: StringProperty(name="Extra Python Path",
                                     description="Folders (separated like PATH) where plug-in pipeline modules live")
    host: StringProperty(name="Host", default="127.0.0.1")
    port: IntProperty(name="Port", default=8765, min=1, max=65535)
    token: StringProperty(name="Token", subtype="PASSWORD",
                          description="The token from the file named in the backend's ready line")
    weights_dir: StringProperty(name="Weights Folder", subtype="DIR_PATH",
                                description="Folder with the model weights (empty: the Hugging Face cache)")
    device: StringProperty(name="Device", default="auto", description="auto, cpu, cuda, cuda:N or mps")
    memory: EnumProperty(name="Memory Mode", items=MEMORY_MODES)
    release_before_render: BoolProperty(name="Free GPU Memory Before Rendering", default=True,
                                        description="Ask the backend to give its GPU memory back when a render starts")
    output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH",
                               description="Every result is also saved here as GLB (empty: the backend's default)")
    accepted_licences: StringProperty(name="Agreed Licences", options={"HIDDEN"},
                                      description="The weights licences you agreed to before a download, one a line")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "connection", expand=True)
        col = layout.column()
        if self.connection == "LAUNCH":
            draw_environment(col.box(), context, self)
            col.prop(self, "python_path")
            col.prop(self, "weights_dir")
            col.prop(self, "device")
            col.prop(self, "memory")
            col.prop(self, "output_dir")
            col.prop(self, "extra_args")
            col.prop(self, "extra_pythonpath")
        else:
            row = col.row()
            row.prop(self, "host")
            row.prop(self, "port")
            col.prop(self, "token")
        layout.prop(self, "release_before_render")
        if self.accepted_licences:
            layout.label(text="Agreed before downloading: " + ", ".join(self.accepted_licences.splitlines()), icon="INFO")
        layout.operator("hy3d.test_connection", icon="LINKED")
        draw_connection_report(layout)


def draw_connection_report(layout) -> None:
    session = app.session
    if session is None:
        return
    box = layout.box()
    if session.phase is Phase.STARTING:
        box.label(text="Connecting...", icon="SORTTIME")
    elif session.phase is Phase.FAILED and session.problem is not None:
        box.label(text=session.problem.message, icon="ERROR")
        for line in (session.problem.hint, *session.problem.details):
            if line:
                box.label(text=line)
    elif session.phase is Phase.READY and session.welcome is not None:
        for line in device_summary({**session.welcome, **(session.status or {})}):
            box.label(text=line)
    else:
        box.label(text="Not connected")


def draw_environment(layout, context, prefs) -> None:
    layout.label(text="Backend Environment", icon="CONSOLE")
    task = app.environment
    if task is not None and task.running:
        layout.progress(factor=task.fraction, type="BAR", text=task.message)
        layout.operator("hy3d.cancel_setup", icon="CANCEL")
        return
    for line in environment_status(prefs):
        layout.label(text=line)
    row = layout.row()
    row.prop(prefs, "torch_build")
    row.operator("hy3d.setup_backend", icon="IMPORT")
    row.operator("hy3d.remove_backend_env", text="", icon="TRASH")
    layout.prop(prefs, "env_dir")
    layout.prop(prefs, "wheels_dir")
    draw_outcome(layout, context, task.last if task is not None else None)


def environment_status(prefs) -> list[str]:
    """The status line: which Python the backend will run with, and what setup found in it."""
    if prefs.python_path:
        return [f"Using the existing environment: {bpy.path.abspath(prefs.python_path)}"]
    report = setup_report(environment_dir(prefs))
    if report is None:
        return ["Not set up: press Set Up Backend (or choose an existing Python below)"]
    return ["Ready", *report.summary()]


_setup_reports: dict[str, tuple[tuple, envsetup.Report | None]] = {}


def setup_report(env_dir: str) -> envsetup.Report | None:
    """The finished setup's report; read again only when its files change, not on every redraw."""
    state_dir = Path(env_dir) / envsetup.STATE_DIR
    stamp = tuple(_file_stamp(state_dir / name) for name in (envsetup.STATE_NAME, envsetup.REPORT_NAME))
    cached = _setup_reports.get(env_dir)
    if cached is None or cached[0] != stamp:
        cached = _setup_reports[env_dir] = (stamp, envsetup.read_report(Path(env_dir)))
    return cached[1]


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def environment_dir(prefs) -> str:
    return bpy.path.abspath(prefs.env_dir) if prefs.env_dir else os.path.join(user_dir(), ENVIRONMENT_FOLDER)


def setup_request(context) -> SetupRequest:
    prefs = context.preferences.addons[__package__].preferences
    return SetupRequest(env_dir=environment_dir(prefs), torch=prefs.torch_build,
                        wheels_dir=bpy.path.abspath(prefs.wheels_dir) if prefs.wheels_dir else "",
                        allow_online=bool(bpy.app.online_access), backend_root=os.path.dirname(os.path.abspath(__file__)))


def download_request(context, model: str, agree: bool) -> DownloadRequest:
    """The download runs with the interpreter, PYTHONPATH and weights folder a launched backend gets.

    Its licence must have been agreed to, now (``agree``, then remembered) or before; DownloadError otherwise.
    """
    prefs = context.preferences.addons[__package__].preferences
    unagreed = downloads.unagreed_licences(model, prefs.accepted_licences)
    if unagreed and not agree:
        raise DownloadError(f"Downloading {model} needs your agreement to the {' and '.join(lic.name for lic in unagreed)}",
                            "read it (its link is in the panel), then press Agree and Download")
    if unagreed:
        prefs.accepted_licences = "\n".join(filter(None, (prefs.accepted_licences, *(lic.name for lic in unagreed))))
    return DownloadRequest(model=model, python=backend_python(prefs), package_dir=os.path.dirname(os.path.abspath(__file__)),
                           log_path=os.path.join(user_dir(), downloads.LOG_NAME), allow_online=bool(bpy.app.online_access),
                           weights_dir=bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else "",
                           extra_pythonpath=extra_pythonpath(prefs), accept_license=True)


def extra_pythonpath(prefs) -> tuple[str, ...]:
    return tuple(p for p in prefs.extra_pythonpath.split(os.pathsep) if p)


def backend_python(prefs) -> str:
    """The chosen existing Python, else the one in the environment Set Up Backend made (if it finished)."""
    if prefs.python_path:
        return bpy.path.abspath(prefs.python_path)
    report = setup_report(environment_dir(prefs))
    return report.python if report is not None else ""


def user_dir() -> str:
    try:
        return bpy.utils.extension_path_user(__package__, create=True)
    except ValueError:  # installed as a legacy add-on
        return os.path.join(tempfile.gettempdir(), "hunyuan3d-blender")


def connection_settings(context) -> ConnectionSettings:
    """Turn the preferences into plain data for the session (nothing bpy crosses into threads)."""
    prefs = context.preferences.addons[__package__].preferences
    if prefs.connection == "ATTACH":
        return ConnectionSettings(host=prefs.host, port=prefs.port, token=prefs.token)
    options = ["--device", prefs.device or "auto", "--memory", prefs.memory]
    if prefs.weights_dir:
        options += ["--weights", bpy.path.abspath(prefs.weights_dir)]
    if prefs.output_dir:
        options += ["--output-dir", bpy.path.abspath(prefs.output_dir)]
    launch = launcher.LaunchSettings(
        python=backend_python(prefs),
        package_dir=os.path.dirname(os.path.abspath(__file__)),
        log_path=os.path.join(user_dir(), "backend.log"),
        options=tuple(options),
        extra_args=tuple(shlex.split(prefs.extra_args, posix=os.name != "nt")),
        extra_pythonpath=extra_pythonpath(prefs),
    )
    return ConnectionSettings(launch=launch)


classes = (HY3D_AddonPreferences,)
