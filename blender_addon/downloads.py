"""Downloading a model's weights when the user asks for it, without freezing Blender. No bpy.

``DownloadTask.start`` runs ``python -m backend download MODEL [--weights DIR]`` with the
interpreter and PYTHONPATH the launcher gives the bundled backend. A worker thread reads the
command's stderr (one line per repository, then the Hugging Face progress bars), copies it to
a log and puts each line on a queue; ``DownloadTask.pump`` on the main thread applies them to
the state the sidebar draws and, at the end, the outcome with the command's error and hint.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

from . import launcher
from .backend.licences import Licence, licences_for
from .backend.weights import DOWNLOADS, HUNYUAN_DIT_REPO, summarise_missing
from .errors import AddonError
from .tasks import BackgroundTask, Finished, Outcome

LOG_NAME = "download.log"
# The download that brings text-to-image, which Hunyuan3D pipelines need for prompts only.
TEXT_TO_IMAGE = next(name for name, folders in DOWNLOADS.items() if {f.repo_id for f in folders} == {HUNYUAN_DIT_REPO})
_PERCENT = re.compile(r"(\d{1,3})%\|")
_LINE_END = re.compile(r"[\r\n]")


class DownloadError(AddonError):
    """A download could not start."""


@dataclass(frozen=True)
class DownloadRequest:
    """Plain data from the preferences; nothing bpy crosses into the thread.

    Args:
        model: a model ``python -m backend download`` knows (a key of ``weights.DOWNLOADS``).
        python: the backend's interpreter, as the launcher would choose it.
        package_dir: the add-on's folder, which holds the bundled ``backend`` package.
        log_path: the command's output goes here.
        allow_online: Blender's "Allow Online Access"; when off, nothing starts.
        weights_dir: download into this folder ("" for the Hugging Face cache).
        extra_pythonpath: folders after ``package_dir`` on PYTHONPATH, as for the launched backend.
        accept_license: the user agreed to the weights' licence in the add-on (``--accept-license``).
    """

    model: str
    python: str
    package_dir: str
    log_path: str
    allow_online: bool
    weights_dir: str = ""
    extra_pythonpath: tuple[str, ...] = ()
    accept_license: bool = False

    def command(self) -> list[str]:
        words = [self.python, "-m", "backend", "download", self.model]
        words += ["--weights", self.weights_dir] if self.weights_dir else []
        return words + (["--accept-license"] if self.accept_license else [])

    def terminal_command(self) -> str:
        """The same download typed in a terminal (the backend package is found from its folder)."""
        if sys.platform == "win32":
            return f"cd /d {subprocess.list2cmdline([self.package_dir])} && {subprocess.list2cmdline(self.command())}"
        return f"cd {shlex.quote(self.package_dir)} && {shlex.join(self.command())}"


@dataclass(frozen=True)
class MissingWeights:
    """What the sidebar says about a pipeline's weights.

    Args:
        summary: what is missing, in one short line.
        model: what ``python -m backend download`` fetches for it ("" when it can't).
        instead: how to get the weights otherwise (the backend's own instructions).
    """

    summary: str
    model: str = ""
    instead: str = ""


def missing_weights(pipeline: dict, text_prompt: bool) -> MissingWeights | None:
    """From a pipeline of the welcome message: None when it can run the chosen input as it is."""
    weights = pipeline.get("weights") or {}
    if not weights.get("ready", True):
        model = pipeline.get("name", "") if pipeline.get("name") in DOWNLOADS else ""
        return MissingWeights(summarise_missing(weights.get("missing") or []), model,
                              "" if model else weights.get("download", ""))
    if text_prompt and HUNYUAN_DIT_REPO in weights.get("where", ""):
        return MissingWeights("Prompts also need the text-to-image model (HunyuanDiT)", TEXT_TO_IMAGE)
    return None


def unagreed_licences(model: str, agreed: str) -> list[Licence]:
    """The licences of ``model``'s download not among ``agreed`` (the preference: one licence name a line)."""
    names = set(agreed.splitlines())
    return [licence for licence in licences_for(model) if licence.name not in names]


@dataclass(frozen=True)
class _Line:
    text: str


class DownloadTask(BackgroundTask):
    """One download at a time; its outcome is "done", "cancelled" or "error"."""

    thread_name = "hy3d-download"

    def __init__(self):
        super().__init__()
        self.model = ""
        self.line = ""
        self._process: subprocess.Popen | None = None

    @property
    def fraction(self) -> float:
        found = _PERCENT.search(self.line)
        return min(1.0, int(found.group(1)) / 100) if found else 0.0

    def start(self, request: DownloadRequest) -> None:
        """Start the command, or raise DownloadError (also kept as ``last``) saying why not."""
        try:
            self._start(request)
        except DownloadError as exc:
            self.last = Outcome("error", exc.message, exc.hint)
            raise

    def cancel(self) -> None:
        process = self._process
        if process is not None:
            super().cancel()
            process.terminate()

    def _status(self) -> str:
        return self.line

    def _apply(self, event: _Line) -> None:
        self.line = event.text

    def _ended(self) -> None:
        self._process = None

    def _stop_hard(self) -> None:
        if self._process is not None:
            self._process.kill()

    def _start(self, request: DownloadRequest) -> None:
        if self.running:
            raise DownloadError(f"Already downloading {self.model}", "wait for it or cancel it")
        if request.model not in DOWNLOADS:
            raise DownloadError(f"The add-on can't download {request.model!r}", "it downloads " + ", ".join(sorted(DOWNLOADS)))
        if not request.allow_online:
            raise DownloadError(
                "Online access is off, so nothing was downloaded",
                "allow it in Preferences > System > Network > Allow Online Access, or download in a terminal: "
                + request.terminal_command())
        try:
            launcher.check_python(request.python)
        except launcher.LaunchError as exc:
            raise DownloadError(exc.message, exc.hint) from None
        try:
            os.makedirs(os.path.dirname(request.log_path), exist_ok=True)
            log = open(request.log_path, "w", encoding="utf-8")  # noqa: SIM115 (the reader thread closes it)
        except OSError as exc:
            raise DownloadError(f"Can't write the download log {request.log_path}: {exc.strerror or exc}") from None
        try:
            process = subprocess.Popen(
                request.command(), cwd=request.package_dir,
                env=launcher.backend_environment(request.package_dir, request.extra_pythonpath),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0,
            )
        except OSError as exc:
            log.close()
            raise DownloadError(f"Could not run {request.python}: {exc.strerror or exc}",
                                "choose a python executable you can run in the add-on preferences") from None
        self.model, self.line, self._process = request.model, "", process
        self._run_in_background(self._read, process, log, request)

    # -- reader thread --

    def _read(self, process: subprocess.Popen, log, request: DownloadRequest) -> None:
        errors, hints, tail = [], [], ""

        def take(line: str) -> None:
            nonlocal tail
            log.write(line + "\n")
            tail = line
            if line.startswith("error: "):
                errors.append(line.removeprefix("error: "))
            elif line.startswith("hint: "):
                hints.append(line.removeprefix("hint: "))
            else:
                self.events.put(_Line(line))

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending, redrawing = "", False
        with log:
            log.write("$ " + request.terminal_command() + "\n")
            # Progress bars redraw as a carriage return and the bar, with no newline: split lines on both,
            # and after a carriage return show the unfinished tail too, which is the bar as it stands.
            while chunk := process.stderr.read1(65536):
                text = pending + decoder.decode(chunk)
                if (last_end := max(text.rfind("\r"), text.rfind("\n"))) >= 0:
                    redrawing = text[last_end] == "\r"
                *lines, pending = _LINE_END.split(text)
                for line in filter(None, map(str.strip, lines)):
                    take(line)
                log.flush()
                if redrawing and pending.strip():
                    self.events.put(_Line(pending.strip()))
            if pending.strip():
                take(pending.strip())
            folders = [line.strip() for line in process.stdout.read().decode("utf-8", "replace").splitlines() if line.strip()]
            code = process.wait()
            log.write(f"exit code {code}\n")
        process.stderr.close()
        process.stdout.close()
        self.events.put(Finished(self._outcome(request, code, folders, errors, hints, tail)))

    def _outcome(self, request: DownloadRequest, code: int, folders: list[str], errors: list[str], hints: list[str],
                 tail: str) -> Outcome:
        if self._cancel.is_set() and code != 0:
            return Outcome("cancelled", f"Download of {request.model} cancelled",
                           "press Download Weights again to go on; finished files are kept")
        if code == 0:
            return Outcome("done", f"Downloaded {request.model}" + (f" to {'; '.join(folders)}" if folders else ""))
        message = errors[-1] if errors else f"The download of {request.model} stopped (exit code {code}): {tail or 'no output'}"
        log_note = f"the log is {request.log_path}"
        return Outcome("error", message, f"{hints[-1]}; {log_note}" if hints else log_note)
