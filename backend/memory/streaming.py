"""``stream`` mode: a component larger than the budget runs block by block.

The component's blocks (transformer blocks, UNet down/mid/up blocks) stay in host memory; the
rest (embeddings, norms, heads) goes to the device for the stage. A hook before each block
makes its copy current and starts copying the next block on a side CUDA stream, so the copy
overlaps the computation; a hook after the block drops its device copy. The order wraps
around, so a denoising loop that calls the model again finds block 0 already on its way.

A unit marked ``stream_on_demand`` (a mixture-of-experts layer's routed expert) may be skipped
by the computation, so it is never prefetched blindly: it is copied when it is called, or earlier
once its caller announces it with ``will_call`` (a gate that has picked its experts). The next
unit prefetched is the next one that will run: the next announced on-demand unit or the next
ordinary one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .component import Component
from .transfer import Transfers, executable_copies

if TYPE_CHECKING:
    import torch
    from torch import nn


class SideStream:
    """Copies on a side CUDA stream, so they overlap the computation on the current one."""

    def __init__(self, device: torch.device):
        import torch

        self._device = device
        self._side = torch.cuda.Stream(device)

    def copy(self, start: Callable[[], list[torch.Tensor]]) -> tuple[list[torch.Tensor], Any]:
        """Run ``start`` (which issues the copies) on the side stream; returns its copies and a ready event."""
        import torch

        with torch.cuda.stream(self._side):
            copies = start()
        ready = torch.cuda.Event()
        ready.record(self._side)
        return copies, ready

    def use(self, copies: list[torch.Tensor], ready: Any) -> None:
        """Make the current stream wait for the copies, and keep their memory until it is done with them."""
        import torch

        current = torch.cuda.current_stream(self._device)
        current.wait_event(ready)
        for copy in copies:
            copy.record_stream(current)  # the side stream must not reuse this memory while the block computes

    def drain(self) -> None:
        import torch

        torch.cuda.current_stream(self._device).wait_stream(self._side)


def will_call(units: Iterable[nn.Module]) -> None:
    """Tell the streamer running these on-demand units (if any) that they will be called, in this order."""
    for unit in units:
        announce = getattr(unit, "stream_announce", None)
        if announce is not None:
            announce()


class BlockStreamer:
    """Runs ``component`` block by block. ``side`` is the copy engine (a ``SideStream`` on CUDA;
    tests hand in one that copies at once, so the ordering logic runs on any machine)."""

    def __init__(self, component: Component, device: torch.device, dtype: torch.dtype, transfers: Transfers,
                 side: SideStream | None = None):
        self._component, self._device, self._dtype, self._transfers = component, device, dtype, transfers
        self._side = side or SideStream(device)
        self._pending: dict[int, tuple[list[torch.Tensor], Any]] = {}
        self._hooks: list[Any] = []
        self._on_demand: set[int] = set()
        self._announced: set[int] = set()
        # Bytes of the on-demand units right after each ordinary unit: what copying all of them would move.
        self._on_demand_after: dict[int, int] = {}
        self._units: list[nn.Module] = []

    def __enter__(self) -> BlockStreamer:
        component = self._component
        try:
            rest = component.rest_slots
            with self._transfers.timed(self._device):
                copies = executable_copies(rest, self._device, self._dtype, self._transfers)
            for slot, copy in zip(rest, copies):
                slot.install(copy)
            self._units = units = component.blocks(component.module)
            for index, block in enumerate(units):
                self._hooks.append(block.register_forward_pre_hook(lambda _m, _a, i=index: self._before(i)))
                self._hooks.append(block.register_forward_hook(lambda _m, _a, _o, i=index: self._after(i)))
                if getattr(block, "stream_on_demand", False):
                    self._on_demand.add(index)
                    block.stream_announce = lambda i=index: self._announce(i)
            ordinary = [i for i in range(len(units)) if i not in self._on_demand]
            for position, index in enumerate(ordinary):
                following = ordinary[position + 1] if position + 1 < len(ordinary) else len(units) + ordinary[0]
                self._on_demand_after[index] = sum(self._unit_bytes(j % len(units)) for j in range(index + 1, following))
            if ordinary:
                self._prefetch(ordinary[0])
            component.streaming = True
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for index in self._on_demand:
            del self._units[index].stream_announce
        self._on_demand.clear()
        self._side.drain()
        self._pending.clear()
        self._component.park()

    def _prefetch(self, index: int) -> None:
        if index in self._pending or not self._component.block_slots:
            return
        slots = self._component.block_slots[index]

        def start() -> list[torch.Tensor]:
            with self._transfers.timed(self._device):
                return executable_copies(slots, self._device, self._dtype, self._transfers)

        self._pending[index] = self._side.copy(start)
        if index in self._on_demand:
            self._transfers.on_demand_bytes += self._unit_bytes(index)

    def _unit_bytes(self, index: int) -> int:
        return sum(slot.nbytes for slot in self._component.block_slots[index])

    def _announce(self, index: int) -> None:
        if not self._announced:  # the first of its layer: nothing is copying it yet
            self._prefetch(index)
        self._announced.add(index)

    def _next_to_run(self, index: int) -> int | None:
        count = len(self._component.block_slots)
        for step in range(1, count):
            candidate = (index + step) % count
            if candidate not in self._on_demand or candidate in self._announced:
                return candidate
        return None

    def _before(self, index: int) -> None:
        self._prefetch(index)
        copies, ready = self._pending.pop(index)
        self._side.use(copies, ready)
        for slot, copy in zip(self._component.block_slots[index], copies):
            slot.install(copy)
        self._announced.discard(index)
        following = self._next_to_run(index)
        if following is not None:
            self._prefetch(following)

    def _after(self, index: int) -> None:
        for slot in self._component.block_slots[index]:
            slot.install(slot.host)
        self._transfers.on_demand_dense_bytes += self._on_demand_after.get(index, 0)
