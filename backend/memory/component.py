"""A registered model component and the tensors it owns.

Every parameter and buffer of a component is a ``Slot``: its host copy (the parked weights: a
view of the weights file, a copy converted once to a smaller compute dtype, or a view of one
exact-size, pinned host buffer) and whatever the module currently computes with. Making a
component ready installs fresh copies in its compute dtype where it executes; parking installs
the host copy again, so weights are never copied back.

A parked component refuses to run: a forward pre-hook on the module and its children raises,
so no code path can compute with parked (possibly float16, CPU-resident) weights by mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from ..protocol import ErrorCode

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .loading import MappedFile

_ARENA_ALIGNMENT = 64


@dataclass
class Slot:
    owners: list[tuple[nn.Module, str]]
    is_param: bool
    host: torch.Tensor
    mapping: MappedFile | None = None

    @property
    def nbytes(self) -> int:
        return self.host.numel() * self.host.element_size()

    def current(self) -> torch.Tensor:
        module, key = self.owners[0]
        return module._parameters[key] if self.is_param else module._buffers[key]

    def install(self, tensor: torch.Tensor) -> None:
        if self.is_param:
            from torch import nn

            # A new Parameter rather than ``.data =``, which refuses some device pairs.
            tensor = nn.Parameter(tensor, requires_grad=False)
        for module, key in self.owners:
            (module._parameters if self.is_param else module._buffers)[key] = tensor

    def release_file_pages(self) -> None:
        if self.mapping is not None:
            self.mapping.release(self.host)


def collect_slots(module: nn.Module) -> list[Slot]:
    """One slot per distinct parameter or buffer (tied weights share a slot)."""
    mappings = getattr(module, "file_mappings", [])
    by_identity: dict[int, Slot] = {}
    for sub in module.modules():
        for store, is_param in ((sub._parameters, True), (sub._buffers, False)):
            for key, tensor in store.items():
                if tensor is None:
                    continue
                slot = by_identity.get(id(tensor))
                if slot is None:
                    host = tensor.data if is_param else tensor
                    owner = next((m for m in mappings if m.owns(host)), None)
                    by_identity[id(tensor)] = Slot([(sub, key)], is_param, host, owner)
                else:
                    slot.owners.append((sub, key))
    return list(by_identity.values())


@dataclass
class Component:
    """Args mirror ``MemoryManager.register``; the rest is the manager's accounting.

    ``ready``: every slot holds a copy in the compute dtype where the component executes.
    ``streaming``: ``stream`` mode is running it block by block.
    """

    name: str
    loader: Callable[[], nn.Module]
    precision: str
    files: tuple[str, ...]
    blocks: Callable[[nn.Module], list[nn.Module]] | None
    declared_bytes: int | None
    storage_dtype: str | None
    compute_dtype: str = "float32"
    precision_why: str = ""
    working_bytes: Callable[[int], int] | None = None
    module: nn.Module | None = None
    slots: list[Slot] = field(default_factory=list)
    block_slots: list[list[Slot]] = field(default_factory=list)
    ready: bool = False
    streaming: bool = False
    arena: torch.Tensor | None = None
    pinned: bool = False
    last_used: int = 0
    _guards: list[Any] = field(default_factory=list, repr=False)

    @property
    def loaded(self) -> bool:
        return self.module is not None

    @property
    def placement(self) -> str:
        return "unloaded" if self.module is None else "ready" if self.ready else "parked"

    @property
    def storage_bytes(self) -> int:
        """Bytes of the parked host copies (the file's size before loading)."""
        if self.module is None:
            return self.declared_bytes or 0
        return sum(slot.nbytes for slot in self.slots)

    def compute_bytes(self, itemsize: int) -> int:
        """Bytes the component takes where it executes (floating tensors in the compute dtype)."""
        if self.module is None:
            stored_itemsize = 4 if self.storage_dtype == "float32" else 2
            return (self.declared_bytes or 0) * itemsize // stored_itemsize
        return sum(_compute_nbytes(slot.host, itemsize) for slot in self.slots)

    def attach(self, module: nn.Module, compute_dtype: torch.dtype) -> None:
        """Adopt a freshly loaded module, parked in the smaller of its storage and compute dtypes."""
        self.module = module
        self.slots = collect_slots(module)
        for slot in self.slots:
            host = slot.host
            if host.is_floating_point() and host.element_size() > compute_dtype.itemsize:
                converted = host.to(compute_dtype)
                slot.release_file_pages()  # the file's bytes are not needed again
                slot.mapping, slot.host = None, converted
                slot.install(converted)
        self.block_slots = []
        if self.blocks is not None:
            by_tensor = {id(slot.current()): slot for slot in self.slots}
            for block in self.blocks(module):
                tensors = [*block.parameters(), *block.buffers()]
                self.block_slots.append([by_tensor[id(t)] for t in tensors if id(t) in by_tensor])
        for sub in (module, *module.children()):
            self._guards.append(sub.register_forward_pre_hook(self._refuse_when_parked))

    def _refuse_when_parked(self, _module: nn.Module, _args: Any) -> None:
        if not (self.ready or self.streaming):
            raise BackendError(
                ErrorCode.INTERNAL,
                f"component {self.name!r} was called while parked in host memory; it computes only inside the memory manager's run_stage",
                hint="this is a bug in the pipeline: call the module inside run_stage's function",
            )

    @property
    def rest_slots(self) -> list[Slot]:
        in_blocks = {id(slot) for block in self.block_slots for slot in block}
        return [slot for slot in self.slots if id(slot) not in in_blocks]

    def copies_bytes(self) -> int:
        """Bytes the executable copies hold besides the host copies (0 where the module computes from them)."""
        total = 0
        for slot in self.slots:
            current = slot.current()
            if current.data_ptr() != slot.host.data_ptr() or current.device != slot.host.device:
                total += current.numel() * current.element_size()
        return total

    def park(self) -> int:
        """Point every slot back at its host copy; device copies are dropped, nothing is copied.

        Returns the bytes of the executable copies dropped.
        """
        freed = self.copies_bytes()
        for slot in self.slots:
            slot.install(slot.host)
        self.ready = self.streaming = False
        return freed

    def unload(self) -> None:
        for guard in self._guards:
            guard.remove()
        self._guards.clear()
        self.module, self.slots, self.block_slots, self.ready, self.streaming = None, [], [], False, False
        if self.arena is not None and self.pinned:
            from .transfer import unpin

            unpin(self.arena)
        self.arena, self.pinned = None, False


def _compute_nbytes(tensor: torch.Tensor, itemsize: int) -> int:
    return tensor.numel() * (itemsize if tensor.is_floating_point() else tensor.element_size())
