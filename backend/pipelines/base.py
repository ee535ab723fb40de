"""The one small interface every model family implements.

A pipeline declares its stages, its parameters and which inputs it takes; ``run`` receives a
validated request and a context (progress reporting, cancellation, the memory manager) and
returns a mesh. Heavy imports (torch, model code) happen inside ``run`` or ``load``, never at
module import, so the server answers ``hello`` instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BackendError, JobCancelled
from ..images import open_image
from ..protocol import ErrorCode

if TYPE_CHECKING:
    from ..mesh import Mesh


@dataclass(frozen=True)
class Param:
    """One user-facing parameter of a pipeline.

    Args:
        name: wire and CLI name (``max_faces`` is ``--max-faces`` on the command line).
        kind: ``int``, ``float``, ``str`` or ``bool``.
        default: used when the request leaves it out.
        help: one line for ``--help``, the add-on tooltip and ``welcome``.
        minimum/maximum: inclusive bounds for numbers.
        choices: allowed values for strings.
        advanced: shown collapsed in the add-on.
        preview: the value for a quick preview (fewest steps, a coarse grid), which the add-on's
            Preview Variations sends and Refine puts back to the full value; None where a
            preview runs it as a full job does (a seed, a value that changes the input picture).
    """

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    advanced: bool = False
    preview: Any = None

    def __post_init__(self) -> None:
        if self.preview is not None:
            self.coerce(self.preview)  # a catalogue mistake shows at import, not in the artist's preview

    def coerce(self, value: Any) -> Any:
        kind = self.kind
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise BackendError(
                ErrorCode.BAD_PARAMETER,
                f"parameter {self.name!r} must be {kind.__name__}, got {type(value).__name__} {value!r}",
                hint=self.help,
            )
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise BackendError(
                ErrorCode.BAD_PARAMETER,
                f"parameter {self.name!r} = {value} is outside [{self.minimum}, {self.maximum}]",
                hint=self.help,
            )
        if self.choices is not None and value not in self.choices:
            raise BackendError(
                ErrorCode.BAD_PARAMETER,
                f"parameter {self.name!r} = {value!r} is not one of {', '.join(self.choices)}",
            )
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind.__name__, "default": self.default, "help": self.help}
        for key in ("minimum", "maximum", "choices"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key)) if key == "choices" else getattr(self, key)
        if self.advanced:
            out["advanced"] = True
        if self.preview is not None:
            out["preview"] = self.preview
        return out


SEED = Param("seed", int, 0, "random seed; the same seed and inputs give the same mesh", minimum=0, maximum=2**31 - 1)
MAX_FACES = Param("max_faces", int, 120000, "decimate the mesh to at most this many triangles", minimum=100, maximum=5_000_000)


@dataclass
class JobRequest:
    """What a job asks for, after validation. ``images`` holds encoded PNG/JPEG bytes by input name
    (``None`` in a plan's request, which names its pictures without sending them); ``mesh`` is an
    input mesh (checked by ``mesh.check_input_mesh``) for pipelines that take one; ``lods`` is how
    many decimated copies of the mesh go with the result."""

    pipeline: str
    params: dict[str, Any]
    text: str | None = None
    images: dict[str, bytes | None] = field(default_factory=dict)
    mesh: Mesh | None = None
    lods: int = 0


@dataclass
class PipelineOutput:
    mesh: Mesh
    images: dict[str, bytes] = field(default_factory=dict)  # intermediate pictures, PNG-encoded
    info: dict[str, Any] = field(default_factory=dict)  # anything worth recording with the result


class JobContext:
    """Handed to ``Pipeline.run``: progress out, cancellation in, and the runtime's services."""

    def __init__(
        self,
        report: Callable[[dict[str, Any]], None],
        is_cancelled: Callable[[], bool],
        runtime: Any = None,
    ):
        self._report = report
        self._is_cancelled = is_cancelled
        self.runtime = runtime
        self.stage: str = ""

    @property
    def memory(self) -> Any:
        memory = getattr(self.runtime, "memory", None)
        if memory is None:
            raise BackendError(ErrorCode.INTERNAL, "this pipeline needs the runtime's memory manager",
                               hint="run it through the backend (a job, `generate`), which creates one")
        return memory

    def run_stage(self, stage: str, names: list[str] | dict[str, str], fn: Callable[[dict[str, Any]], Any], *,
                  activation_bytes: int | None = None) -> Any:
        """Run ``fn({name: module})`` with the named components ready where they compute.

        The one way a pipeline runs a stage: the memory manager plans, moves and casts, and its
        notes (mode chosen, out-of-memory step down, the stage's figures) reach the job's events.
        ``names`` may map the keys ``fn`` wants (a model's own part names) to component names.
        """
        aliases = names if isinstance(names, dict) else {name: name for name in names}
        return self.memory.run_stage(stage, list(aliases.values()), lambda modules: fn({key: modules[name] for key, name in aliases.items()}),
                                     report=self.note, activation_bytes=activation_bytes)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled; call between steps."""
        if self._is_cancelled():
            raise JobCancelled()

    def progress(self, stage: str, step: int, total: int, message: str = "", **extra: Any) -> None:
        """Report progress of ``stage`` (step out of total), then honour a pending cancel."""
        self.stage = stage
        self._report({"stage": stage, "step": step, "total": total, "message": message, **extra})
        self.check_cancelled()

    def note(self, message: str, **extra: Any) -> None:
        """A progress event that only carries a message (a downgrade, a choice made for the user)."""
        self._report({"stage": self.stage, "step": None, "total": None, "message": message, **extra})


class Pipeline:
    """Base class of every pipeline. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]
    params: ClassVar[tuple[Param, ...]] = ()
    inputs: ClassVar[tuple[str, ...]] = ("image",)  # any of "image", "text", "mesh", or named extra images
    requires_one_of: ClassVar[tuple[str, ...]] = ("image",)
    # Stages whose time is proportional to a parameter, or to a power of it (``{"sampling": "steps", "mesh": ("resolution", 3)}``):
    # plans scale recorded timings by it.
    scales_with: ClassVar[dict[str, str | tuple[str, float]]] = {}

    def __init__(self, weights_dir: str | None = None):
        self.weights_dir = weights_dir

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "stages": list(self.stages),
            "inputs": list(self.inputs),
            "params": [p.describe() for p in self.params],
        }

    def check_weights(self) -> WeightsReport:
        """Where the weights were found, or what is missing and how to get it."""
        return WeightsReport(ready=True, where="built in")

    def register_components(self, memory: Any, request: JobRequest | None = None) -> list[str]:
        """Declare to ``memory`` every component a job of ``request`` uses (None: every one whose
        weights are present), without loading anything; returns their names. ``run`` calls it
        first, so ``--memory auto`` plans on the whole job; ``doctor`` calls it to show each
        component's precision and the mode ``auto`` would pick."""
        return []

    def validate(self, request: JobRequest) -> JobRequest:
        """Fill defaults and check every parameter and input; raise BackendError naming the fix."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(request.params) - set(known))
        if unknown:
            raise BackendError(
                ErrorCode.BAD_PARAMETER,
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}",
                hint="parameters: " + ", ".join(known),
            )
        params = {name: p.coerce(request.params[name]) if name in request.params else p.default for name, p in known.items()}
        given = set(request.images) | ({"text"} if request.text else set()) | ({"mesh"} if request.mesh is not None else set())
        extra = sorted(given - set(self.inputs))
        if extra:
            raise BackendError(ErrorCode.BAD_INPUT, f"{self.name} does not take {', '.join(extra)}", hint="inputs: " + ", ".join(self.inputs))
        for name, data in request.images.items():
            if data is not None:  # a plan names the pictures a job will take without sending them
                open_image(data, name)
        if not given & set(self.requires_one_of):
            raise BackendError(
                ErrorCode.BAD_INPUT,
                f"{self.name} needs {' or '.join(self.requires_one_of)}",
                hint="inputs: " + ", ".join(self.inputs),
            )
        if params.get("texture"):
            from ..texture.stage import require_paint_weights

            require_paint_weights(params, self.weights_dir)
        return JobRequest(request.pipeline, params, request.text, dict(request.images), request.mesh, request.lods)

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        raise NotImplementedError

    def execute(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        """The whole job: ``run``, then the texture stage on its mesh when the request asks for ``texture``."""
        if not request.params.get("texture"):
            return self.run(request, ctx)
        from ..texture.stage import register_texture_parts, texture_output

        register_texture_parts(ctx.memory, request.params, self.weights_dir)  # first, so `--memory auto` plans on the whole job
        return texture_output(ctx, self.run(request, ctx), request, self.weights_dir)


@dataclass
class WeightsReport:
    ready: bool
    where: str = ""
    missing: list[str] = field(default_factory=list)
    download: str = ""  # the exact command that fetches what is missing

    def describe(self) -> dict[str, Any]:
        return {"ready": self.ready, "where": self.where, "missing": self.missing, "download": self.download}
