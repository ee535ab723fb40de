"""The memory manager: where every registered component lives, stage by stage."""

from __future__ import annotations

import gc
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..devices import FLOAT16, DeviceInfo, PrecisionPolicy, cuda_memory, dtype_name
from ..errors import BackendError
from ..protocol import ErrorCode
from .component import Component
from .loading import stored_size_and_dtype
from .stats import GB, HostPeak, StageStats, Stopwatch, current_rss
from .transfer import Transfers, move_to_device, pin_host_copies

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")
log = logging.getLogger(__name__)

# The one list of memory modes, with what each does: the CLI's --memory and the add-on's preference read it.
MODE_HELP = {
    "auto": "pick from free memory and the sizes of the job's models",
    "resident": "keep every model on the GPU (fastest, most memory)",
    "stage": "only the running stage on the GPU (like Hunyuan3D-1's --save_memory)",
    "stream": "move weights block by block (least GPU memory)",
    "cpu": "run on the CPU only",
}
MODES = tuple(MODE_HELP)
_STEP_DOWN = {"resident": "stage", "cpu": "stage", "stage": "stream"}
_RESERVE_BYTES = 1 << 30
_MIN_ACTIVATION_BYTES = 256 << 20
_STATS_KEPT = 64
_ASSUMED_BLOCKS = 8  # stream mode's plan for a component not loaded yet, whose block list is unknown


class MemoryManager:
    """Owns residency, precision and movement of model components on one execution device.

    Args:
        policy: the precision policy of the execution device (its ``device`` is where stages run).
        mode: ``auto``, ``resident``, ``stage``, ``stream`` or ``cpu`` (see docs/memory.md).
        budget_bytes: memory the components and activations may use on the execution device;
            None measures free memory at each stage (minus ``reserve_bytes``).
        reserve_bytes: kept free for the OS, the display and other programs.
        pin_limit_bytes: most host memory to page-lock (None: half of RAM).
        free_memory: ``() -> (free, total)`` bytes of the execution device; injectable for tests.
    """

    def __init__(
        self,
        policy: PrecisionPolicy | None = None,
        mode: str = "auto",
        *,
        budget_bytes: int | None = None,
        reserve_bytes: int = _RESERVE_BYTES,
        pin_limit_bytes: int | None = None,
        free_memory: Callable[[], tuple[int, int]] | None = None,
    ):
        import torch

        self.policy = policy or PrecisionPolicy(DeviceInfo("cpu", name="CPU"))
        self.info = self.policy.device
        self.device = torch.device(self.info.torch_device)
        if mode not in MODES:
            raise BackendError(ErrorCode.BAD_PARAMETER, f"memory mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "stream" and self.device.type != "cuda":
            raise BackendError(ErrorCode.BAD_PARAMETER, "memory mode 'stream' needs a CUDA GPU",
                               hint="use --memory stage or --memory auto on this machine")
        if mode == "cpu" and self.device.type != "cpu":
            raise BackendError(ErrorCode.BAD_PARAMETER, "memory mode 'cpu' runs on the CPU", hint="add --device cpu")
        self.mode = mode
        self.budget_bytes = budget_bytes
        self.reserve_bytes = reserve_bytes
        self._pin_limit = pin_limit_bytes
        self._free_memory = free_memory or self._measure_free_memory
        self._components: dict[str, Component] = {}
        self._clock = itertools.count(1)
        self._stats: deque[StageStats] = deque(maxlen=_STATS_KEPT)
        self._decision: tuple[str, str] | None = None  # (mode, why) of the latest stage
        self._downgraded: tuple[str, str] | None = None  # (mode, why) after an out-of-memory step down, for this job
        self._previous_downgrade: str | None = None  # told at the next job's first stage
        self._job: list[str] = []  # components the running job registered or used: what ``auto`` plans on
        self.snapshot: dict[str, Any] = {}
        self._publish()

    # -- registration ------------------------------------------------------------------------

    def register(
        self,
        name: str,
        loader: Callable[[], nn.Module],
        *,
        precision: str = FLOAT16,
        files: Sequence[str | os.PathLike[str]] = (),
        prefix: str = "",
        blocks: Callable[[nn.Module], list[nn.Module]] | None = None,
        size_bytes: int | None = None,
        working_bytes: Callable[[int], int] | None = None,
    ) -> None:
        """Declare a component for the running job; nothing is loaded until a stage asks for it.

        Registering again with the same files is a no-op, so pipelines register on every job.
        A component is its name and its resolved files: the same name with other files (a new
        weights folder or snapshot) unloads the old weights and loads the new ones when needed.

        Args:
            name: unique, e.g. ``"svrm.encoder"`` or ``"mvd_lite.unet"``.
            loader: returns the module on the CPU in its storage dtype (``load_safetensors_module``).
            precision: what the model family computes in on an accelerator (``"float16"`` for
                Hunyuan3D-1); the policy resolves it per device. Never the file's storage dtype.
            files: the files the loader reads (safetensors, or ``torch.save`` checkpoints); they
                give the size and the storage dtype before loading.
            prefix: only the tensors whose names start with this belong to the component (one
                file holding several components).
            blocks: returns the module's movable units in execution order, for ``stream`` mode.
            size_bytes: the weights' size when there are no ``files`` to read it from.
            working_bytes: ``(compute dtype's itemsize) -> bytes`` a stage running the component
                needs besides its weights, for this job (activations, buffers); None: a quarter
                of its weights, at least 256 MiB.
        """
        resolved = tuple(str(Path(f).resolve()) for f in files)
        existing = self._components.get(name)
        if existing is not None and existing.files == resolved:
            existing.working_bytes = working_bytes  # it may depend on the job's parameters
            self._join_job(name)
            return
        if existing is not None:
            log.info("component %s now loads from %s; unloading the weights from %s", name, ", ".join(resolved), ", ".join(existing.files))
            existing.unload()
        self._components[name] = self._new_component(name, loader, precision, resolved, prefix, blocks, size_bytes, working_bytes)
        self._join_job(name)
        self._publish()

    def _new_component(self, name: str, loader: Callable[[], nn.Module], precision: str, resolved: tuple[str, ...], prefix: str,
                       blocks: Callable[[nn.Module], list[nn.Module]] | None, size_bytes: int | None,
                       working_bytes: Callable[[int], int] | None) -> Component:
        choice = self.policy.choose(dtype_name(precision))
        storage = None
        if resolved:
            stored, storage = stored_size_and_dtype(resolved, prefix)
            size_bytes = stored if size_bytes is None else size_bytes
        return Component(name, loader, dtype_name(precision), resolved, blocks, size_bytes, storage,
                         compute_dtype=choice.dtype, precision_why=choice.reason, working_bytes=working_bytes)

    def _join_job(self, name: str) -> None:
        if name not in self._job:
            self._job.append(name)

    def between_steps(self) -> None:
        """Called by a stage between two of its model calls: on the CPU the heap the last call freed is
        handed back, so a long loop's peak stays that of one call (glibc would keep it, and the next
        call's allocations would land beside it)."""
        if self.device.type == "cpu":
            _trim_host_heap()

    def compute_dtype(self, name: str) -> torch.dtype:
        import torch

        return getattr(torch, self._component(name).compute_dtype)

    def load(self, name: str) -> None:
        """Read the weights of ``name`` into host RAM, parked (a stage loads them anyway when needed)."""
        self._ensure_loaded(self._component(name))
        self._publish()

    def unload(self, name: str) -> None:
        """Forget the loaded weights of ``name`` (it stays registered and loads again when needed)."""
        self._component(name).unload()
        self._publish()

    def release(self) -> dict[str, Any]:
        """Give back every executable copy (accelerator memory; float32 copies in ``cpu`` mode) now.

        Parked host copies stay, so the next stage only copies them over again. Returns what was
        freed per component and, on CUDA, the memory PyTorch held before and after.
        """
        before = self._held_device_memory()
        freed = []
        for component in self._components.values():
            if component.ready:
                freed.append({"component": component.name, "bytes": component.park()})
        self._release_cached_memory()
        after = self._held_device_memory()
        self._decision = None
        self._publish()
        out: dict[str, Any] = {"freed": freed, "freed_bytes": sum(f["bytes"] for f in freed), "device": str(self.device)}
        if before is not None:
            out["device_reserved_before"], out["device_reserved_after"] = before, after
        log.info("released %d component(s), %d bytes", len(freed), out["freed_bytes"])
        return out

    def holds_executable_copies(self) -> bool:
        """Whether ``release`` would free anything."""
        return any(c.ready and c.copies_bytes() for c in self._components.values())

    def close(self) -> None:
        for component in self._components.values():
            component.unload()
        self._publish()

    # -- stages ------------------------------------------------------------------------------

    def run_stage(
        self,
        stage: str,
        names: list[str],
        fn: Callable[[dict[str, nn.Module]], T],
        report: Callable[..., None] | None = None,
        *,
        activation_bytes: int | None = None,
    ) -> T:
        """Run ``fn`` with the named components ready on ``self.device`` in their compute dtypes.

        Args:
            stage: the pipeline's stage name (figures and messages use it).
            names: the components the stage executes.
            fn: receives ``{name: module}``; inputs must be cast to ``compute_dtype(name)``.
            report: ``report(message=..., **extra)``, e.g. ``JobContext.note``; hears the mode
                chosen, any out-of-memory step down and the stage's figures.
            activation_bytes: memory the stage needs besides weights (default: the ``working_bytes``
                its components were registered with, else a quarter of their weights; at least 256 MiB).

        On an out-of-memory error the stage's tensors are freed, the mode steps down one step
        (resident -> stage -> stream) and the stage runs once more.
        """
        components = [self._component(name) for name in names]
        for name in names:
            self._join_job(name)
        if self._previous_downgrade is not None:
            self._tell(report, f"memory: planning afresh ({self._previous_downgrade} applied to the previous job only)")
            self._previous_downgrade = None
        activation = activation_bytes if activation_bytes is not None else self._default_activation(components)
        mode, why = self._plan(stage, components, activation)
        if self._decision is None or self._decision[0] != mode:
            self._tell(report, f"memory: {mode} mode for {stage} ({why})", memory={"mode": mode, "why": why})
        self._decision = (mode, why)
        downgraded_from = None
        while True:
            out_of_memory = False
            try:
                return self._run_once(stage, components, fn, mode, activation, downgraded_from, report)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not _is_out_of_memory(exc):
                    raise
                out_of_memory, failure = True, str(exc).splitlines()[0]
            if out_of_memory:
                self._release_cached_memory()  # outside the except block, so the failed tensors are gone
                lower = _STEP_DOWN.get(mode)
                if lower == "stream" and self.device.type != "cuda":
                    lower = None
                if downgraded_from is not None or lower is None:
                    raise BackendError(
                        ErrorCode.OUT_OF_MEMORY,
                        f"stage {stage!r} ran out of memory in {mode} mode: {failure}",
                        hint="close other programs using the GPU, lower the resolution, or run with --device cpu",
                    )
                why = f"out of memory in {stage} with {mode} mode; {lower} mode for the rest of this job"
                self._tell(report, f"memory: {why}; retrying with {lower} mode",
                           downgrade={"stage": stage, "from": mode, "to": lower, "error": failure})
                self._downgraded = (lower, why)
                self._decision = (lower, why)
                downgraded_from, mode = mode, lower

    def _run_once(self, stage: str, components: list[Component], fn: Callable[[dict[str, nn.Module]], T],
                  mode: str, activation: int, downgraded_from: str | None, report: Callable[..., None] | None) -> T:
        import contextlib

        stats = StageStats(stage, mode, components=[c.name for c in components], downgraded_from=downgraded_from)
        transfers = Transfers()
        watch = Stopwatch()
        self._reset_device_peak()
        succeeded = False
        with HostPeak() as host_peak, contextlib.ExitStack() as streams:
            try:
                for component in components:
                    self._ensure_loaded(component)
                self._make_room(components, mode, activation)
                for component in components:
                    component.last_used = next(self._clock)
                    dtype = self.compute_dtype(component.name)
                    if self.device.type == "cuda" and mode in ("stage", "stream"):
                        pin_host_copies(component, self._pin_budget())
                    if mode == "stream" and component.block_slots and not component.ready:
                        from .streaming import BlockStreamer

                        streams.enter_context(BlockStreamer(component, self.device, dtype, transfers))
                    elif not component.ready:
                        move_to_device(component, self.device, dtype, transfers)
                self._publish()
                result = fn({component.name: component.module for component in components})
                self._synchronize()
                succeeded = True
            finally:
                streams.close()
                if mode in ("stage", "stream") or not succeeded:
                    for component in components:
                        if component.loaded:
                            component.park()
                    if self.device.type == "cpu":
                        _trim_host_heap()
                stats.seconds = watch.elapsed
                stats.peak_host_rss_bytes = host_peak.peak
                self._publish()
        stats.peak_device_bytes = self._device_peak()
        stats.h2d_bytes = transfers.h2d_bytes
        stats.on_demand_h2d_bytes = transfers.on_demand_bytes
        stats.on_demand_dense_h2d_bytes = transfers.on_demand_dense_bytes
        stats.h2d_seconds = transfers.seconds()
        self._stats.append(stats)
        self._publish()
        self._tell(report, stats.summary(), memory_stats=stats.as_dict())
        return result

    def _ensure_loaded(self, component: Component) -> None:
        if component.loaded:
            return
        module = component.loader()
        misplaced = sorted({t.device.type for t in [*module.parameters(), *module.buffers()]} - {"cpu"})
        if misplaced:
            raise BackendError(
                ErrorCode.INTERNAL,
                f"the loader of {component.name!r} returned tensors on {', '.join(misplaced)}",
                hint="loaders return CPU modules (load_safetensors_module); the memory manager moves them",
            )
        module.eval().requires_grad_(False)
        if component.storage_dtype is None:  # no safetensors header to read it from (a .ckpt, a declared size)
            floating = next((t for t in module.parameters() if t.is_floating_point()), None)
            component.storage_dtype = None if floating is None else dtype_name(floating.dtype)
        component.attach(module, self.compute_dtype(component.name))

    # -- planning ----------------------------------------------------------------------------

    def _plan(self, stage: str, components: list[Component], activation: int) -> tuple[str, str]:
        if self._downgraded is not None:
            return self._downgraded
        if self.mode != "auto":
            return self.mode, "chosen with --memory"
        if self.device.type == "cpu":
            return "cpu", "no accelerator: components run in float32 in host RAM and stay while they fit"
        return self._plan_on(stage, components, self._job_components(components), self._weights_budget(activation))

    def _job_components(self, extra: list[Component]) -> list[Component]:
        names = list(dict.fromkeys([*self._job, *(c.name for c in extra)]))
        return [self._components[n] for n in names if n in self._components]

    def _plan_on(self, stage: str, components: list[Component], job: list[Component], budget: int) -> tuple[str, str]:
        everything = sum(self._compute_bytes(c) for c in job)
        needed = sum(self._compute_bytes(c) for c in components)
        if everything <= budget:
            return "resident", f"the job's {len(job)} component(s) ({everything / GB:.1f} GB) fit the {budget / GB:.1f} GB budget"
        if needed <= budget or self.device.type != "cuda":
            return "stage", (f"the job's {len(job)} component(s) ({everything / GB:.1f} GB) exceed the {budget / GB:.1f} GB budget; "
                             f"{stage} needs {needed / GB:.1f} GB")
        return "stream", f"{stage} needs {needed / GB:.1f} GB, more than the {budget / GB:.1f} GB budget"

    def preview(self, names: list[str]) -> dict[str, Any]:
        """The mode ``auto`` would pick for a job of ``names`` on this machine now, with the numbers behind it."""
        return self._preview([self._component(name) for name in names])

    def plan(self, declared: Declarations) -> dict[str, Any]:
        """What a job of the ``declared`` components would take on this machine now: the mode ``auto``
        would pick (as ``preview`` says), the peak accelerator and host memory expected, and what is free.

        Reads only (components not registered yet are sized from their files' headers, nothing
        loads), so it is safe beside a running job. Each component is taken for one stage with the
        activation ``run_stage`` assumes by default.
        """
        import psutil

        components = []
        for entry in declared.entries:
            existing = self._components.get(entry.name)
            if existing is not None and existing.files == entry.files:
                components.append(existing)
            else:
                components.append(self._new_component(entry.name, entry.loader, entry.precision, entry.files, entry.prefix,
                                                      entry.blocks, entry.size_bytes, entry.working_bytes))
        out = self._preview(components)
        if "mode" not in out:  # no components: nothing for ``auto`` to decide
            out["mode"], out["why"] = self._plan_preview()
        mode = out["mode"]
        compute = {c.name: self._compute_bytes(c) for c in components}
        activation = {c.name: self._default_activation([c]) for c in components}
        largest_activation = max(activation.values(), default=0)
        rss = current_rss()
        if self.device.type == "cpu":
            # float32 copies are made for what is not ready yet; ready ones are already in the RSS.
            host_peak = rss + sum(compute[c.name] for c in components if not c.ready) + largest_activation
            device_peak = None
        else:
            unloaded = [c.storage_bytes for c in components if not c.loaded]
            # Parked copies stay in host RAM in stage and stream modes; resident mode reads one file at a time.
            host_peak = rss + (sum(unloaded) if mode in ("stage", "stream") else max(unloaded, default=0))
            if mode == "resident":
                device_peak = sum(compute.values()) + largest_activation
            elif mode == "stream":
                device_peak = max((activation[c.name] + 2 * compute[c.name] // max(len(c.block_slots), _ASSUMED_BLOCKS)
                                   for c in components), default=0)
            else:
                device_peak = max((activation[c.name] + compute[c.name] for c in components), default=0)
        memory = psutil.virtual_memory()
        out["device"] = str(self.device)
        out["host"] = {"peak_bytes": host_peak, "available_bytes": memory.available, "total_bytes": memory.total,
                       "rss_bytes": rss}
        if self.device.type == "cpu":
            out["accelerator"] = None
        else:
            free, total = self._free_memory()
            out["accelerator"] = {"peak_bytes": device_peak, "free_bytes": free, "total_bytes": total}
        out["components"] = [{"name": c.name, "compute_bytes": compute[c.name], "activation_bytes": activation[c.name],
                              "placement": c.placement if self._components.get(c.name) is c else "unloaded"}
                             for c in components]
        return out

    def _preview(self, components: list[Component]) -> dict[str, Any]:
        compute = sum(self._compute_bytes(c) for c in components)
        largest = max(components, key=self._compute_bytes, default=None)
        out: dict[str, Any] = {"job_compute_bytes": compute}
        if self.mode != "auto":
            out["mode"], out["why"] = self.mode, "chosen with --memory"
        elif self.device.type == "cpu":
            out["mode"], out["why"] = "cpu", "no accelerator: components run in float32 in host RAM"
        elif largest is not None:
            activation = self._default_activation([largest])
            budget = self._weights_budget(activation)
            out["mode"], out["why"] = self._plan_on(f"its largest stage ({largest.name})", [largest], components, budget)
            out["budget_bytes"] = budget
        return out

    def _make_room(self, components: list[Component], mode: str, activation: int) -> None:
        """Park what this stage does not use: everything in stage/stream modes, least recently used first otherwise."""
        wanted = {id(c) for c in components}
        others = sorted((c for c in self._components.values() if c.ready and id(c) not in wanted),
                        key=lambda c: c.last_used)
        if mode in ("stage", "stream"):
            for component in others:
                component.park()
            return
        budget = self._weights_budget(activation)
        held = self._held_compute_bytes()
        incoming = sum(self._compute_bytes(c) for c in components if not c.ready)
        for component in others:
            if held + incoming <= budget:
                break
            held -= self._compute_bytes(component)
            component.park()

    def spare_bytes(self) -> int:
        """What a running stage may still allocate on the execution device: its free memory beyond
        the reserve, or, with ``budget_bytes``, what the budget leaves beside the components held there."""
        if self.budget_bytes is not None:
            return self.budget_bytes - self._held_compute_bytes()
        free, _total = self._free_memory()
        return free - self.reserve_bytes

    def _weights_budget(self, activation: int) -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes - activation
        free, _total = self._free_memory()
        return free + self._held_compute_bytes() - self.reserve_bytes - activation

    def _held_compute_bytes(self) -> int:
        """Bytes of the components ready on the execution device."""
        # A list first: a plan reads this from a client's thread while the worker may register components.
        return sum(self._compute_bytes(c) for c in list(self._components.values()) if c.ready)

    def _compute_bytes(self, component: Component) -> int:
        import torch

        return component.compute_bytes(getattr(torch, component.compute_dtype).itemsize)

    def _default_activation(self, components: list[Component]) -> int:
        import torch

        declared = sum(c.working_bytes(getattr(torch, c.compute_dtype).itemsize) for c in components if c.working_bytes)
        undeclared = sum(self._compute_bytes(c) for c in components if not c.working_bytes)
        return max(_MIN_ACTIVATION_BYTES, declared + undeclared // 4)

    def _pin_budget(self) -> int:
        import psutil

        limit = self._pin_limit if self._pin_limit is not None else psutil.virtual_memory().total // 2
        return limit - sum(c.arena.numel() for c in self._components.values() if c.pinned)

    # -- the device ----------------------------------------------------------------------------

    def _measure_free_memory(self) -> tuple[int, int]:
        if self.device.type == "cuda":
            return cuda_memory(self.device)
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total

    def _synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def _reset_device_peak(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _device_peak(self) -> int | None:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.device.type == "mps":
            return torch.mps.driver_allocated_memory()
        return None

    def _release_cached_memory(self) -> None:
        import torch

        if self.device.type == "cpu":
            _trim_host_heap()  # no gc pass here: it would stall the server's other threads
            return
        gc.collect()  # tensors caught in reference cycles hold device memory until collected
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def _held_device_memory(self) -> int | None:
        import torch

        return torch.cuda.memory_reserved(self.device) if self.device.type == "cuda" else None

    def after_job(self) -> None:
        """Between jobs: hand cached but unused accelerator memory back (Blender's viewport shares
        the GPU); an out-of-memory step down ends with its job, and the next job plans afresh."""
        self._release_cached_memory()
        if self._downgraded is not None:
            self._previous_downgrade = f"the step down to {self._downgraded[0]} mode"
        self._downgraded = None
        self._job = []
        self._publish()

    # -- reporting -----------------------------------------------------------------------------

    @property
    def last_stage_stats(self) -> dict[str, Any] | None:
        return self._stats[-1].as_dict() if self._stats else None

    def stats(self) -> list[dict[str, Any]]:
        """Figures of the most recent stages, oldest first."""
        return [s.as_dict() for s in self._stats]

    def placement(self, name: str) -> str:
        """``unloaded``; ``parked`` (host copy only, cannot be called); ``ready`` (a copy in its
        compute dtype where it executes: the accelerator, or host RAM in ``cpu`` mode)."""
        return self._component(name).placement

    def describe(self) -> dict[str, Any]:
        """The latest published status: an immutable snapshot, safe to read from any thread."""
        return self.snapshot

    def _publish(self) -> None:
        """Build a fresh status and swap it in whole; readers on other threads never see a dict change."""
        mode, why = self._decision or self._plan_preview()
        components = list(self._components.values())
        out: dict[str, Any] = {
            "mode": mode,
            "requested": self.mode,
            "why": why,
            "device": str(self.device),
            "precision": self.policy.describe(),
            "reserve_bytes": self.reserve_bytes,
            "components": [self.describe_component(c.name) for c in components],
            "job_components": list(self._job),
            "device_weights_bytes": sum(self._compute_bytes(c) for c in components if c.ready and self.device.type != "cpu"),
            "pinned_bytes": sum(c.arena.numel() for c in components if c.pinned),
            "host_rss_bytes": current_rss(),
            "recent_stages": [stats.as_dict() for stats in list(self._stats)[-8:]],
        }
        if self.budget_bytes is not None:
            out["budget_bytes"] = self.budget_bytes
        else:
            free, total = self._free_memory()
            out["free_bytes"], out["total_bytes"] = free, total
        self.snapshot = out

    def _plan_preview(self) -> tuple[str, str]:
        if self.mode != "auto":
            return self.mode, "chosen with --memory"
        if self.device.type == "cpu":
            return "cpu", "no accelerator: components run in float32 in host RAM"
        return "auto", "decided per stage from free memory and the job's components"

    def describe_component(self, name: str) -> dict[str, Any]:
        """Where ``name`` is, its storage, parked and compute dtypes, and why it computes in that one."""
        component = self._component(name)
        parked = sorted({dtype_name(s.host.dtype) for s in component.slots if s.host.is_floating_point()})
        return {
            "name": component.name,
            "placement": component.placement,
            "files": list(component.files),
            "storage_bytes": component.storage_bytes,
            "compute_bytes": self._compute_bytes(component),
            "precision": component.precision,
            "storage_dtype": component.storage_dtype,
            "parked_dtype": (parked[0] if len(parked) == 1 else parked) if parked else None,
            "compute_dtype": component.compute_dtype,
            "compute_dtype_why": component.precision_why,
            "pinned": component.pinned,
            "streamable": component.blocks is not None,
        }

    def _component(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            raise ValueError(f"component {name!r} is not registered; registered: {', '.join(self._components) or 'none'}") from None

    @staticmethod
    def _tell(report: Callable[..., None] | None, message: str, **extra: Any) -> None:
        log.info(message)
        if report is not None:
            report(message=message, **extra)


def _trim_host_heap() -> None:
    """Hand freed heap memory back to the OS. glibc keeps what the float32 copies of a stage used
    (its mmap threshold grows with large frees), so RSS would otherwise stay at the stage's peak."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (musl): nothing to trim this way


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class Declaration:
    name: str
    loader: Callable[[], Any]
    precision: str
    files: tuple[str, ...]
    prefix: str
    blocks: Callable[[Any], list[Any]] | None
    size_bytes: int | None
    working_bytes: Callable[[int], int] | None


class Declarations:
    """Stands in for the manager while a pipeline declares a job's components for a plan
    (``Pipeline.register_components``): records each ``register``, loads and changes nothing."""

    def __init__(self) -> None:
        self.entries: list[Declaration] = []

    def register(self, name: str, loader: Callable[[], Any], *, precision: str = FLOAT16, files: Sequence[str | os.PathLike[str]] = (),
                 prefix: str = "", blocks: Callable[[Any], list[Any]] | None = None, size_bytes: int | None = None,
                 working_bytes: Callable[[int], int] | None = None) -> None:
        resolved = tuple(str(Path(f).resolve()) for f in files)
        self.entries = [e for e in self.entries if e.name != name]
        self.entries.append(Declaration(name, loader, dtype_name(precision), resolved, prefix, blocks, size_bytes, working_bytes))
