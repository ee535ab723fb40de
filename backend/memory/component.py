"""A registered model component and the tensors it owns.

Every parameter and buffer of a component is a ``Slot``: its host copy (the storage: a view of
the weights file, or of one exact-size, pinned host buffer) and whatever the module currently
computes with. Moving to the device installs fresh device copies in the slots; offloading
installs the host copy again, so weights are never copied back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    name: str
    loader: Callable[[], nn.Module]
    released_dtype: str
    blocks: Callable[[nn.Module], list[nn.Module]] | None
    declared_bytes: int | None
    compute_dtype: str = "float32"
    module: nn.Module | None = None
    slots: list[Slot] = field(default_factory=list)
    block_slots: list[list[Slot]] = field(default_factory=list)
    on_device: bool = False
    arena: torch.Tensor | None = None
    pinned: bool = False
    last_used: int = 0

    @property
    def loaded(self) -> bool:
        return self.module is not None

    @property
    def storage_bytes(self) -> int:
        if self.module is None:
            return self.declared_bytes or 0
        return sum(slot.nbytes for slot in self.slots)

    def compute_bytes(self, itemsize: int) -> int:
        """Bytes the component takes where it executes (floating tensors in the compute dtype)."""
        if self.module is None:
            released_itemsize = 4 if self.released_dtype == "float32" else 2
            return (self.declared_bytes or 0) * itemsize // released_itemsize
        return sum(_compute_nbytes(slot.host, itemsize) for slot in self.slots)

    def attach(self, module: nn.Module) -> None:
        self.module = module
        self.slots = collect_slots(module)
        self.block_slots = []
        if self.blocks is not None:
            by_tensor = {id(slot.current()): slot for slot in self.slots}
            for block in self.blocks(module):
                tensors = [*block.parameters(), *block.buffers()]
                self.block_slots.append([by_tensor[id(t)] for t in tensors if id(t) in by_tensor])

    @property
    def rest_slots(self) -> list[Slot]:
        in_blocks = {id(slot) for block in self.block_slots for slot in block}
        return [slot for slot in self.slots if id(slot) not in in_blocks]

    def park(self) -> None:
        """Point every slot back at its host copy; device copies are dropped, nothing is copied."""
        for slot in self.slots:
            slot.install(slot.host)
        self.on_device = False

    def unload(self) -> None:
        self.module, self.slots, self.block_slots, self.on_device = None, [], [], False
        if self.arena is not None and self.pinned:
            from .transfer import unpin

            unpin(self.arena)
        self.arena, self.pinned = None, False


def _compute_nbytes(tensor: torch.Tensor, itemsize: int) -> int:
    return tensor.numel() * (itemsize if tensor.is_floating_point() else tensor.element_size())
