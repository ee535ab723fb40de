"""The memory manager: where each model component lives and in which precision it computes.

Pipelines get one through ``ctx.memory`` and use only this::

    mm.register("svrm.encoder", loader, precision="float16",     # what the family computes in on GPUs
                files=[path], prefix="encoder.",                  # identity, size and storage dtype
                blocks=lambda m: list(m.model.blocks))            # movable units, for `stream` mode
    mm.device -> torch.device                                     # where stages execute
    mm.compute_dtype("svrm.encoder") -> torch.dtype               # cast inputs to this
    ctx.run_stage("encode", ["svrm.encoder"], lambda mods: mods["svrm.encoder"](x),
                  activation_bytes=None) -> fn's result           # the one way to run a stage
    mm.release() -> what was freed                                # give accelerator memory back
    mm.placement("svrm.encoder") -> "unloaded" | "parked" | "ready"
    mm.describe() -> dict                                         # immutable status snapshot

``loader()`` returns the module on the CPU in its storage dtype; ``load_safetensors_module``
(safetensors files) and ``load_torch_module`` (``torch.save`` checkpoints) build one without a
second copy in RAM. The manager owns every move
and cast: nothing else calls ``.cuda()``, ``.half()`` or ``.to(device)`` on a model.
docs/memory.md describes the modes and the precision policy.
"""

from .loading import WeightsError, load_safetensors_module, load_torch_module, read_safetensors_header, stored_size_and_dtype
from .manager import MODES, MemoryManager

__all__ = ["MODES", "MemoryManager", "WeightsError", "load_safetensors_module", "load_torch_module", "read_safetensors_header",
           "stored_size_and_dtype"]
