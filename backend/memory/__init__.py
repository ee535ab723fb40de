"""The memory manager: where each model component lives and in which precision it computes.

Pipelines get one through ``ctx.memory`` and use only this::

    mm.register("svrm", loader, released_dtype=torch.float16,
                blocks=lambda m: list(m.transformer.blocks),   # movable units, for `stream` mode
                size_bytes=917_000_000)                         # lets `auto` plan before loading
    mm.is_registered("svrm") -> bool
    mm.device -> torch.device                                   # where stages execute
    mm.compute_dtype("svrm") -> torch.dtype                     # cast inputs to this
    mm.run_stage("reconstruct", ["svrm"], lambda mods: mods["svrm"](x), report=ctx.note,
                 activation_bytes=None) -> fn's result
    mm.last_stage_stats / mm.stats()                            # per-stage figures, as dicts
    mm.placement("svrm") -> "unloaded" | "host" | "device"
    mm.describe() -> dict                                       # mode, why, budget, components

``loader()`` returns the module on the CPU in its storage dtype; ``load_safetensors_module``
(safetensors files) and ``load_torch_module`` (``torch.save`` checkpoints) build one without a
second copy in RAM. The manager owns every move
and cast: nothing else calls ``.cuda()``, ``.half()`` or ``.to(device)`` on a model.
docs/memory.md describes the modes and the precision policy.
"""

from .loading import WeightsError, load_safetensors_module, load_torch_module
from .manager import MODES, MemoryManager

__all__ = ["MODES", "MemoryManager", "WeightsError", "load_safetensors_module", "load_torch_module"]
