"""Command line: ``python -m backend serve | generate | plan | doctor | download | setup-env``.

Only the standard library is imported at module level, so ``--help`` answers at once; torch
and the model code load inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import SERVER_NAME, __version__
from .envsetup import add_setup_env_parser, cmd_setup_env
from .errors import BackendError
from .memory.manager import MODES as MEMORY_MODES
from .protocol import DEFAULT_MAX_BUFFER_BYTES, PROTOCOL_VERSION, ErrorCode

DEVICE_CHOICES_HELP = "auto, cpu, cuda, cuda:N or mps (default: auto, the best one found)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="Hunyuan3D for Blender backend: text or image to a 3D mesh, on the GPU or the CPU.",
    )
    parser.add_argument("--version", action="version", version=f"{SERVER_NAME} {__version__} (protocol {PROTOCOL_VERSION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_runtime_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
        p.add_argument("--memory", default="auto", choices=MEMORY_MODES,
                       help="where model weights live: resident (all on the GPU), stage (only the running stage), "
                            "stream (block by block), cpu; auto picks from free memory (default)")
        p.add_argument("--save-memory", action="store_true", help="same as --memory stage (Hunyuan3D-1's flag)")
        p.add_argument("--precision", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                       help="compute precision on the accelerator; auto follows the release precision where the device "
                            "supports it (the CPU always computes in float32 unless bfloat16 is native and asked for)")
        p.add_argument("--weights", metavar="DIR", help="folder with the model weights (default: the Hugging Face cache)")
        p.add_argument("--pipelines-from", metavar="MODULE", action="append", default=[],
                       help="import MODULE, which registers extra pipelines (for plug-ins and tests); repeatable")

    serve = commands.add_parser("serve", help="run the backend server the Blender add-on talks to",
                                description="Listen for the add-on on a local socket and run its jobs one at a time. "
                                            "Prints one JSON line when ready: {\"event\": \"ready\", \"port\": ...}.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=0, help="port to listen on; 0 lets the system pick (default)")
    serve.add_argument("--token-file", type=Path, metavar="PATH",
                       help="file holding the token clients must send; created with a new token if missing. "
                            "Default: a new token in a private file named in the ready line")
    serve.add_argument("--parent-pid", type=int, metavar="PID", help="exit when this process (Blender) is gone")
    serve.add_argument("--output-dir", type=Path, metavar="DIR", help="where every result is also saved (GLB + JSON)")
    serve.add_argument("--max-queue", type=int, default=32, help="queued jobs beyond this are refused as busy (default 32)")
    serve.add_argument("--keep-alive", type=float, default=10.0, metavar="MINUTES",
                       help="after this many minutes without a job, give the GPU memory back (weights stay in RAM, so the "
                            "next job only copies them over again); 0 never does (default 10)")
    serve.add_argument("--max-buffer-bytes", type=int, default=DEFAULT_MAX_BUFFER_BYTES,
                       help="largest total of raw buffers one message may carry (default 1 GiB)")
    add_runtime_options(serve)

    def add_job_options(p: argparse.ArgumentParser) -> None:
        source = p.add_mutually_exclusive_group()
        source.add_argument("--image", type=Path, metavar="PATH", help="input picture (PNG or JPEG)")
        source.add_argument("--text", metavar="PROMPT", help="describe the object instead of giving a picture")
        p.add_argument("--views", type=Path, metavar="PATH", help="a 3x2 grid of six views (reconstruction-only models)")
        p.add_argument("--view", dest="named_views", action="append", default=[], metavar="NAME=PATH",
                       help="another picture of the object for multiview models (hunyuan3d-2mv): left, back or right; "
                            "the front is --image; repeatable")
        p.add_argument("--mesh", type=Path, metavar="PATH",
                       help="a mesh to paint (GLB, OBJ, PLY or STL; Y up, front towards +Z) with --model hunyuan3d-2-paint")
        p.add_argument("--texture", action="store_true",
                       help="paint a texture on the shape with Hunyuan3D-2 Paint (needs its weights); writes a GLB with its "
                            "texture embedded and the texture as a PNG beside it")
        p.add_argument("--model", default="auto", help="pipeline to run; auto picks the best one whose weights are present")
        p.add_argument("--steps", type=int, help="denoising steps (models that denoise)")
        p.add_argument("--seed", type=int, help="random seed")
        p.add_argument("--max-faces", type=int, help="decimate to at most this many triangles")
        p.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=VALUE",
                       help="any other pipeline parameter (see `doctor --json` for the list); repeatable")
        add_runtime_options(p)

    generate = commands.add_parser("generate", help="make one mesh from an image or a prompt, in this process",
                                   description="Run one job here with a progress bar and write the mesh.")
    add_job_options(generate)
    generate.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                          help="mesh file to write: .glb, .obj or .ply (.glb for a textured mesh)")

    plan = commands.add_parser("plan", help="say what a job would take here before running it: memory mode, peak memory, time",
                               description="Plan a job without running it: the memory mode --memory auto would pick, the "
                                           "device, the expected peak accelerator and host memory beside what is free, and, "
                                           "once the model has run on this machine, the expected time (scaled from the "
                                           "recorded stage timings of earlier jobs). Takes generate's options; pictures are "
                                           "named, not read.")
    add_job_options(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object (the protocol's plan reply)")

    doctor = commands.add_parser("doctor", help="show devices, precision, memory plan and which model weights were found",
                                 description="Check this machine: devices, the precision each computes in, the memory mode "
                                             "auto would pick, and which model weights are present (with the command to "
                                             "download what is missing).")
    doctor.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_runtime_options(doctor)

    from .weights import DOWNLOADS

    download = commands.add_parser("download", help="download a model's weights from Hugging Face (nothing else goes online)",
                                   description="Fetch just the folders a model needs, into --weights DIR in upstream's layout "
                                               "or into the Hugging Face cache, then check them as a job would.")
    download.add_argument("model", choices=sorted(DOWNLOADS), help="what to download (hunyuandit: text-to-image, for prompts)")
    download.add_argument("--weights", metavar="DIR", help="folder to download into (default: the Hugging Face cache)")
    download.add_argument("--accept-license", action="store_true",
                          help="agree to the weights' licence (shown first; it excludes the EU, the UK and South Korea) "
                               "without being asked; remembered, like an interactive yes")
    add_setup_env_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "setup-env":  # runs in a bare Python, before anything beyond the standard library loads
        return cmd_setup_env(args)
    if getattr(args, "save_memory", False):
        args.memory = "stage"
    try:
        from . import pipelines

        for module in getattr(args, "pipelines_from", []):
            pipelines.load_plugin(module)
        commands = {"serve": cmd_serve, "generate": cmd_generate, "plan": cmd_plan, "doctor": cmd_doctor, "download": cmd_download}
        return commands[args.command](args)
    except BackendError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _runtime(args: argparse.Namespace):
    from .runtime import Runtime

    return Runtime.create(device=args.device, memory=args.memory, precision=args.precision)


def _pipeline_catalogue(weights_dir: str | None) -> list[dict[str, Any]]:
    """Every pipeline with its weights report; the one ``--model auto`` would pick first, marked default."""
    from . import pipelines

    catalogue = []
    for name in pipelines.names():
        pipeline = pipelines.get(name)(weights_dir=weights_dir)
        catalogue.append({**pipeline.describe(), "weights": pipeline.check_weights().describe()})
    ready = {entry["name"] for entry in catalogue if entry["weights"]["ready"]}
    # What ``--model auto`` would pick with no inputs given, read off the reports just made.
    default = pipelines.first_preferred(ready.__contains__)
    for entry in catalogue:
        entry["default"] = entry["name"] == default
    catalogue.sort(key=lambda p: not p["default"])
    return catalogue


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .jobs import JobEngine
    from .paths import default_output_dir, load_or_create_token
    from .server import Server
    from .timings import TimingRecords, default_timings_file

    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and args.token_file is None:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"refusing to listen on {args.host} without --token-file",
                           hint="anyone who can reach that address could use your GPU; create a token file first")
    token, token_file, remove_token = load_or_create_token(args.token_file)
    try:
        runtime = _runtime(args)
        if args.keep_alive < 0:
            raise BackendError(ErrorCode.BAD_PARAMETER, f"--keep-alive {args.keep_alive:g}: minutes cannot be negative",
                               hint="give 0 to keep the GPU memory until the backend exits")
        engine = JobEngine(runtime, output_dir=args.output_dir or default_output_dir(), weights_dir=args.weights,
                           max_queue=args.max_queue, keep_alive_s=args.keep_alive * 60, timings=TimingRecords(default_timings_file()))
        identity = {"devices": runtime.describe_devices(), "pipelines": _pipeline_catalogue(args.weights)}
        server = Server(engine, token, identity, host=args.host, port=args.port, max_buffer_bytes=args.max_buffer_bytes,
                        catalogue=lambda: _pipeline_catalogue(args.weights))
        if args.parent_pid:
            server.watch_parent(args.parent_pid)
        for stop_signal in (signal.SIGTERM, signal.SIGINT):  # shut down as the shutdown op does, token file included
            signal.signal(stop_signal, lambda *_: server.request_shutdown())
        ready = {"event": "ready", "port": server.port, "pid": os.getpid(), "protocol": PROTOCOL_VERSION,
                 "host": args.host, "token_file": str(token_file)}
        print(json.dumps(ready), flush=True)
        server.serve_forever()
    finally:
        if remove_token:
            token_file.unlink(missing_ok=True)
    return 0


# -- generate ---------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from . import pipelines
    from .jobs import Job, JobEngine
    from .mesh import Mesh
    from .mesh.export import FORMATS, TEXTURED_FORMATS, save, save_textures
    from .mesh.inputs import load_mesh_file
    from .pipelines.base import JobRequest
    from .timings import TimingRecords, default_timings_file

    if args.output.suffix.lower() not in FORMATS:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"{args.output.name}: unknown mesh format", hint="end the name with .glb, .obj or .ply")
    if (args.texture or args.mesh is not None) and args.output.suffix.lower() not in TEXTURED_FORMATS:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"{args.output.name}: a textured mesh is written as GLB", hint="end the name with .glb")
    images = {name: path.read_bytes() for name, path in _pictures(args).items()}
    input_mesh = load_mesh_file(args.mesh) if args.mesh is not None else None
    model = _choose_model(args, set(images) | ({"mesh"} if input_mesh is not None else set()))
    params = _collect_params(args, pipelines.get(model))
    runtime = _runtime(args)
    engine = JobEngine(runtime, output_dir=None, weights_dir=args.weights, timings=TimingRecords(default_timings_file()))
    request = engine.pipeline(model).validate(JobRequest(model, params, args.text, images, input_mesh))
    progress = TerminalProgress(sys.stderr)
    outcome: dict[str, Any] = {}

    def sink(header: dict[str, Any], buffers: list) -> None:
        if header["op"] == "progress":
            progress.update(header)
        else:
            outcome["header"], outcome["buffers"] = header, buffers

    job = Job(id="cli", request=request, owner=None, sink=sink)
    print(f"model: {model}" + (" (picked by --model auto: the best one whose weights are present)" if args.model == "auto" else ""),
          file=sys.stderr)
    worker = threading.Thread(target=engine.execute, args=(job,), daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        job.cancel.set()
        print("\ncancelling...", file=sys.stderr)
        worker.join()
    progress.finish()
    header = outcome["header"]
    if header["op"] == "cancelled":
        print("cancelled", file=sys.stderr)
        return 130
    if header["op"] == "error":
        raise BackendError(header["code"], header["message"], header.get("hint", ""))
    mesh = Mesh.from_buffers({b.name: b for b in outcome["buffers"]})
    save(mesh, args.output)
    textures = save_textures(mesh, args.output)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in header["timings"].items())
    print(f"wrote {args.output} ({mesh.vertex_count} vertices, {mesh.face_count} faces; {timings})", file=sys.stderr)
    for slot, path in textures.items():
        print(f"wrote {path} ({slot.replace('_', ' ')} texture)", file=sys.stderr)
    return 0


def _choose_model(args: argparse.Namespace, given: set[str]) -> str:
    """The pipeline to run: --model, or with auto the best one for the inputs (the painting pipeline for a mesh)."""
    from . import pipelines

    given = given | ({"text"} if args.text else set())
    if "mesh" in given and args.model == "auto":
        return next(name for name in pipelines.names() if "mesh" in pipelines.get(name).inputs)
    return pipelines.choose(args.model, args.weights, given=given)


def _pictures(args: argparse.Namespace) -> dict[str, Path]:
    """The job's pictures by input name (--image, --views, each --view NAME=PATH), each checked to exist."""
    named = []
    for item in args.named_views:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise BackendError(ErrorCode.BAD_PARAMETER, f"--view {item!r}: expected NAME=PATH", hint="e.g. --view back=back.png")
        named.append((name, Path(path)))
    pictures = {}
    for name, path in (("image", args.image), ("views", args.views), *named):
        if path is not None:
            if not path.is_file():
                raise BackendError(ErrorCode.BAD_INPUT, f"{path}: no such file", hint=f"check the path given for {name}")
            pictures[name] = path
    return pictures


def _collect_params(args: argparse.Namespace, pipeline_cls) -> dict[str, Any]:
    declared = {p.name: p for p in pipeline_cls.params}
    params: dict[str, Any] = {}
    flags = {"steps": args.steps, "seed": args.seed, "max_faces": args.max_faces, "texture": True if args.texture else None}
    for name, value in flags.items():
        if value is None:
            continue
        if name not in declared:
            raise BackendError(ErrorCode.BAD_PARAMETER, f"{pipeline_cls.name} has no --{name.replace('_', '-')} option",
                               hint="its parameters: " + (", ".join(declared) or "none"))
        params[name] = value
    for item in args.extra:
        name, sep, raw = item.partition("=")
        if not sep:
            raise BackendError(ErrorCode.BAD_PARAMETER, f"--set {item!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


class TerminalProgress:
    """One self-rewriting line per stage: ``multiview  [#####-----]  23/50  12.3s``."""

    def __init__(self, stream):
        self.stream = stream
        self.interactive = stream.isatty()
        self.stage = None
        self.last_print = 0.0

    def update(self, event: dict[str, Any]) -> None:
        step, total = event.get("step"), event.get("total")
        if event.get("message") and step is None:
            self._line_break()
            print(f"note: {event['message']}", file=self.stream)
            return
        if event["stage"] != self.stage:
            self._line_break()
            self.stage = event["stage"]
        now = time.monotonic()
        if not self.interactive and now - self.last_print < 1.0 and step != total:
            return
        self.last_print = now
        bar = ""
        if total:
            filled = int(20 * step / total)
            bar = f"[{'#' * filled}{'-' * (20 - filled)}] {step}/{total}"
        line = f"{self.stage:<14} {bar}  {event.get('elapsed', 0):.1f}s"
        if self.interactive:
            self.stream.write("\r" + line)
            self.stream.flush()
        else:
            print(line, file=self.stream)

    def _line_break(self) -> None:
        if self.interactive and self.stage is not None:
            self.stream.write("\n")

    def finish(self) -> None:
        self._line_break()
        self.stage = None


# -- plan -------------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from . import pipelines
    from .jobs import JobEngine
    from .mesh.inputs import load_mesh_file
    from .pipelines.base import JobRequest
    from .timings import TimingRecords, default_timings_file

    pictures = _pictures(args)
    input_mesh = load_mesh_file(args.mesh) if args.mesh is not None else None
    model = _choose_model(args, set(pictures) | ({"mesh"} if input_mesh is not None else set()))
    params = _collect_params(args, pipelines.get(model))
    engine = JobEngine(_runtime(args), output_dir=None, weights_dir=args.weights, timings=TimingRecords(default_timings_file()))
    plan = engine.plan(JobRequest(model, params, args.text, dict.fromkeys(pictures), input_mesh))
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print("\n".join(plan_lines(plan)))
    return 0


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """The plan for people: model and device, memory mode and why, peak memory beside what is free, time."""
    host, accelerator = plan["host"], plan["accelerator"]
    lines = [f"model: {plan['pipeline']} on {plan['device']}", f"memory: {plan['mode']} mode ({plan['why']})"]
    if accelerator is not None:
        lines.append(f"accelerator memory: ~{_gb(accelerator['peak_bytes'])} peak, {_gb(accelerator['free_bytes'])} free "
                     f"of {_gb(accelerator['total_bytes'])}")
    lines.append(f"host memory: ~{_gb(host['peak_bytes'])} peak (the backend holds {_gb(host['rss_bytes'])} now), "
                 f"{_gb(host['available_bytes'])} available of {_gb(host['total_bytes'])}")
    for component in plan["components"]:
        lines.append(f"  {component['name']:<36} {_gb(component['compute_bytes'])} weights + {_gb(component['activation_bytes'])} "
                     f"working memory ({component['placement']})")
    expected = plan["time"]
    if expected:
        seconds = expected["seconds"]
        lines.append(f"time: about {seconds:.1f} s ({expected['basis']})" if seconds < 10 else f"time: about {seconds:.0f} s ({expected['basis']})")
    else:
        lines.append(f"time: unknown ({plan['time_unknown']})")
    return lines


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


# -- doctor -----------------------------------------------------------------------------------


def cmd_download(args: argparse.Namespace) -> int:
    """Progress goes to stderr; stdout carries only the downloaded folders, one path a line (the add-on reads them)."""
    from .licences import require_agreement
    from .weights import download

    def ask(question: str) -> str:
        print(question, end="", file=sys.stderr, flush=True)
        return sys.stdin.readline()

    require_agreement(args.model, args.accept_license, ask if sys.stdin.isatty() else None,
                      say=lambda line: print(line, file=sys.stderr))
    for path in download(args.model, args.weights, progress=lambda line: print(line, file=sys.stderr)):
        print(path)
    return 0


def _memory_plan(memory, pipeline_name: str, weights_dir: str | None) -> dict[str, Any]:
    """The components a pipeline would run with their storage and compute dtypes, and the mode ``auto`` would pick."""
    from . import pipelines

    try:
        names = pipelines.get(pipeline_name)(weights_dir=weights_dir).register_components(memory)
    except BackendError as exc:
        return {"error": exc.message}
    return {**memory.preview(names), "components": [memory.describe_component(name) for name in names]}


def cmd_doctor(args: argparse.Namespace) -> int:
    from .weights import summarise_missing

    runtime = _runtime(args)
    pipelines_found = _pipeline_catalogue(args.weights)
    for entry in pipelines_found:
        if entry["weights"]["ready"]:
            entry["memory"] = _memory_plan(runtime.memory, entry["name"], args.weights)
    report = {
        "backend": {"name": SERVER_NAME, "version": __version__, "protocol": PROTOCOL_VERSION, "python": sys.version.split()[0]},
        "devices": runtime.describe_devices(),
        "memory": runtime.status(),
        "pipelines": pipelines_found,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    out = [f"{SERVER_NAME} {__version__} (protocol {PROTOCOL_VERSION}), Python {report['backend']['python']}", "", "Devices:"]
    for dev in report["devices"]:
        marker = "*" if dev.get("selected") else " "
        memory = f"{_gib(dev.get('free_bytes'))} free of {_gib(dev.get('total_bytes'))}"
        extra = [f"compute capability {dev['compute_capability']}"] if dev.get("compute_capability") else []
        extra += [f"{dev['cores']} cores"] if dev.get("cores") else []
        out.append(f" {marker} {dev['device']:<7} {dev['name']}: {memory}; " + ", ".join(extra + [f"computes in {dev.get('compute_dtype')}"]))
    memory = report["memory"]
    out += ["", f"Memory: mode {memory['mode']} ({memory['why']})",
            f"  precision: models made for float16 compute in {memory['precision']['float16_models_compute_in']} "
            f"({memory['precision']['why']})"]
    out += ["", "Models:"]
    for p in report["pipelines"]:
        w = p["weights"]
        if w["ready"]:
            out.append(f"  {p['name']:<22} ready ({w['where']})")
            plan = p["memory"]
            if "error" in plan:
                out.append(f"  {'':<22} {plan['error']}")
                continue
            out.append(f"  {'':<22} memory: {plan['mode']} ({plan['why']})")
            for c in plan["components"]:
                out.append(f"  {'':<24} {c['name']:<28} stored {c['storage_dtype']}, computes in {c['compute_dtype']} "
                           f"({_gib(c['compute_bytes'])}; {c['compute_dtype_why']})")
        else:
            out.append(f"  {p['name']:<22} missing: {summarise_missing(w['missing'])}")
            if w["download"]:
                out.append(f"  {'':<22} get it with: {w['download']}")
    if not report["pipelines"]:
        out.append("  none registered")
    print("\n".join(out))
    return 0
