"""Moving a component's tensors to where they execute, and pinning host copies.

Host copies that are moved repeatedly (``stage`` and ``stream`` modes on CUDA) are gathered into
one exact-size buffer per component and page-locked with ``cudaHostRegister``; PyTorch's pinned
allocator would round every request up to a power of two. Where the OS refuses (WSL, a full
pinned quota) the file-backed copy stays and copies are merely slower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .component import _ARENA_ALIGNMENT, Component, Slot

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class Transfers:
    """Bytes moved during one stage; CUDA copies are timed with events on the stream that ran them.

    ``on_demand_bytes``: the part of ``h2d_bytes`` that moved ``stream`` mode's on-demand units
    (routed experts); ``on_demand_dense_bytes``: what moving every on-demand unit at each pass would have.
    """

    h2d_bytes: int = 0
    on_demand_bytes: int = 0
    on_demand_dense_bytes: int = 0
    _events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list)

    def timed(self, device: torch.device) -> _CopyTimer:
        return _CopyTimer(self, device)

    def seconds(self) -> float:
        total = 0.0
        for start, end in self._events:
            end.synchronize()
            total += start.elapsed_time(end) / 1000
        return total


class _CopyTimer:
    def __init__(self, transfers: Transfers, device: torch.device):
        self._transfers, self._cuda = transfers, device.type == "cuda"

    def __enter__(self) -> _CopyTimer:
        if self._cuda:
            import torch

            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._transfers._events.append((self._start, end))


def executable_copies(slots: Iterable[Slot], device: torch.device, dtype: torch.dtype, transfers: Transfers) -> list[torch.Tensor]:
    """Each slot's host tensor on ``device`` with floating tensors in ``dtype``; installs nothing.

    On the CPU a tensor already in ``dtype`` is used as is; a converted one releases the file
    pages it was read from, so the file's bytes and the converted copy are not both resident.
    """
    copies = []
    for slot in slots:
        host = slot.host
        target = dtype if host.is_floating_point() else host.dtype
        if device.type == "cpu":
            copy = host if host.dtype == target else host.to(target)
            if copy is not host:
                slot.release_file_pages()
        else:
            copy = host.to(device, non_blocking=True)  # host copies are never written, so this is safe even when pageable
            transfers.h2d_bytes += slot.nbytes
            if copy.dtype != target:
                copy = copy.to(target)
            slot.release_file_pages()
        copies.append(copy)
    return copies


def move_to_device(component: Component, device: torch.device, dtype: torch.dtype, transfers: Transfers) -> None:
    """Install device copies of every slot, all or nothing: on failure the component stays parked."""
    with transfers.timed(device):
        copies = executable_copies(component.slots, device, dtype, transfers)
    for slot, copy in zip(component.slots, copies):
        slot.install(copy)
    component.ready = True


def pin_host_copies(component: Component, limit_bytes: int) -> bool:
    """Gather the host copies into one page-locked buffer of exact size; False where that is refused."""
    import torch

    if component.arena is not None:
        return component.pinned
    sizes = [slot.nbytes for slot in component.slots]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // _ARENA_ALIGNMENT) * _ARENA_ALIGNMENT
    if total == 0 or total > limit_bytes:
        return False
    arena = torch.empty(total, dtype=torch.uint8)
    if not _register(arena):
        return False
    for slot, offset, size in zip(component.slots, offsets, sizes):
        view = arena[offset:offset + size].view(slot.host.dtype).view(slot.host.shape)
        view.copy_(slot.host)
        slot.release_file_pages()
        slot.mapping = None
        if not component.ready:
            slot.install(view)
        slot.host = view
    component.arena, component.pinned = arena, True
    return True


def _register(buffer: torch.Tensor) -> bool:
    import torch

    result = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
    if int(result) != 0:
        _clear_last_cuda_error()
        log.info("cannot pin %d bytes of host memory (CUDA error %d); copies will use pageable memory", buffer.numel(), int(result))
        return False
    return True


def _clear_last_cuda_error() -> None:
    """A failed cudaHostRegister leaves its error as CUDA's "last error", which PyTorch's next kernel
    launch check would report as its own failure; reading it through the already loaded runtime
    library clears it."""
    import ctypes

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so", "cudart64_13.dll", "cudart64_12.dll"):
        try:
            ctypes.CDLL(name).cudaGetLastError()
            return
        except (OSError, AttributeError):
            continue


def unpin(buffer: torch.Tensor) -> None:
    import torch

    torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())
