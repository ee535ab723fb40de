"""Build a module from its weights files (safetensors, or torch.save checkpoints) without a second copy in host RAM.

The module is constructed with its parameters on the ``meta`` device (no allocation, no random
initialisation), then every parameter and persistent buffer is assigned a zero-copy view of a
private memory map of its file. Pages are read from disk only when touched, and the memory
manager hands them back to the kernel (``release``) once it has copied them elsewhere, so host
RAM never holds the file's bytes and the converted copy at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from ..protocol import ErrorCode

if TYPE_CHECKING:
    import torch
    from torch import nn

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
             "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
_FLOATING = ("float64", "float32", "float16", "bfloat16")


class WeightsError(BackendError):
    """A weights file is unreadable, truncated, or does not match the model it should fill."""

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str = "delete the file and download it again"):
        super().__init__(ErrorCode.WEIGHTS_CORRUPT, f"{os.fspath(path)}: {problem}", hint)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # torch's name: "float16", "int64", ...
    shape: tuple[int, ...]
    begin: int  # offsets in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file says about itself, checked against its size."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    size: int


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The header of a safetensors file; a WeightsError names the file when it is unreadable,
    truncated or inconsistent. The one reader of safetensors headers in the backend."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 8:
                raise WeightsError(path, f"is {size} bytes, too short to be a safetensors file")
            length = int.from_bytes(f.read(8), "little")
            if length > min(size - 8, _MAX_HEADER_BYTES):
                raise WeightsError(path, f"is truncated or not a safetensors file (header of {length} bytes in a file of {size})")
            raw = f.read(length)
    except OSError as exc:
        raise WeightsError(path, f"cannot be read: {exc.strerror or exc}", hint="check the path and permissions") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(path, f"has a corrupt header ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsError(path, "has a corrupt header (not a JSON object)")
    data_start = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise WeightsError(path, "has a corrupt header (__metadata__ is not an object)")
    tensors = {}
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise WeightsError(path, f"has a corrupt entry for tensor {name!r}: {entry!r}") from None
        if end - begin != math.prod(shape) * _ITEMSIZE[dtype] or begin < 0:
            raise WeightsError(path, f"has inconsistent offsets for tensor {name!r}")
        if data_start + end > size:
            raise WeightsError(path, f"is truncated: tensor {name!r} ends at byte {data_start + end} but the file has {size}")
        tensors[name] = TensorEntry(dtype, shape, begin, end)
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, size)


def stored_size_and_dtype(paths: Sequence[str | os.PathLike[str]], prefix: str = "") -> tuple[int, str | None]:
    """Bytes of the tensors in ``paths`` whose names start with ``prefix``, and the floating dtype most
    of those bytes are stored in (None when there is no floating tensor).

    A safetensors file is read from its header alone; a ``torch.save`` checkpoint (``.bin``,
    ``.ckpt``, ``.pt``, or a suffix-less zip, as Hugging Face cache blobs are named) through its
    memory map (no tensor data), with the tensors of a dict of state dicts named ``entry.key``.
    """
    total, floating = 0, {}
    for path in paths:
        for name, (nbytes, dtype) in _stored_tensors(path).items():
            if name.startswith(prefix):
                total += nbytes
                if dtype in _FLOATING:
                    floating[dtype] = floating.get(dtype, 0) + nbytes
    return total, max(floating, key=floating.get) if floating else None


def _is_safetensors(path: str | os.PathLike[str]) -> bool:
    """By the name, or for a file without a known suffix (a Hugging Face cache blob) by its first bytes: a ``torch.save`` checkpoint is a zip."""
    suffix = Path(path).suffix
    if suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth"):
        return suffix == ".safetensors"
    try:
        with open(path, "rb") as file:
            return file.read(4) != b"PK\x03\x04"
    except OSError as exc:
        raise WeightsError(path, f"cannot be read: {exc.strerror or exc}", hint="check the path and permissions") from None


def _stored_tensors(path: str | os.PathLike[str]) -> dict[str, tuple[int, str]]:
    """Each tensor's name, bytes and dtype name in a safetensors file or a ``torch.save`` checkpoint."""
    if _is_safetensors(path):
        return {name: (entry.nbytes, entry.dtype) for name, entry in read_safetensors_header(path).tensors.items()}
    import torch

    def flatten(state: Any, stem: str) -> Iterator[tuple[str, torch.Tensor]]:
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                yield stem + key, value
            elif isinstance(value, dict):
                yield from flatten(value, f"{stem}{key}.")

    checkpoint = read_torch_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise WeightsError(path, "is not a state dict or a dict of state dicts", hint="use the checkpoint as released")
    return {name: (t.numel() * t.element_size(), str(t.dtype).removeprefix("torch.")) for name, t in flatten(checkpoint, "")}


class MappedFile:
    """One safetensors file mapped privately (copy-on-write) into memory."""

    def __init__(self, path: str | os.PathLike[str]):
        import torch

        header = read_safetensors_header(path)
        self.path = header.path
        self.tensors: dict[str, torch.Tensor] = {}
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if header.size > header.data_start else None
        except OSError as exc:
            raise WeightsError(path, f"cannot be read: {exc.strerror or exc}", hint="check the path and permissions") from None
        self._base = torch.frombuffer(self._map, dtype=torch.uint8).data_ptr() if self._map is not None else 0
        for name, entry in header.tensors.items():
            dtype = getattr(torch, entry.dtype)
            count = entry.nbytes // dtype.itemsize
            if count == 0:
                self.tensors[name] = torch.empty(entry.shape, dtype=dtype)
            else:
                self.tensors[name] = torch.frombuffer(self._map, dtype=dtype, count=count,
                                                      offset=header.data_start + entry.begin).view(entry.shape)

    def owns(self, tensor: torch.Tensor) -> bool:
        return self._map is not None and self._base <= tensor.data_ptr() < self._base + len(self._map)

    def release(self, tensor: torch.Tensor) -> None:
        """Hand the pages under ``tensor`` back to the kernel; they are re-read from the file if touched again."""
        if not self.owns(tensor) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = tensor.data_ptr() - self._base
        end = start + tensor.numel() * tensor.element_size()
        first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)


_building = threading.local()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside, modules built on this thread get their parameters on ``meta``; buffers stay real
    (some are never saved). Uses torch's parameter-registration hook, which acts only for the
    thread inside this block, so modules built elsewhere at the same time are untouched."""
    import torch
    from torch import nn
    from torch.nn.modules.module import register_module_parameter_registration_hook

    def to_meta(_module: nn.Module, _name: str, param: nn.Parameter) -> nn.Parameter | None:
        if getattr(_building, "depth", 0) and param.device.type != "meta":
            return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        return None

    handle = register_module_parameter_registration_hook(to_meta)
    _building.depth = getattr(_building, "depth", 0) + 1
    try:
        with torch.device("cpu"):
            yield
    finally:
        _building.depth -= 1
        handle.remove()


def load_safetensors_module(
    factory: Callable[[], nn.Module],
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    rename: Callable[[str], str | None] | None = None,
) -> nn.Module:
    """Build ``factory()`` and fill it from the safetensors file(s) at ``paths``, zero-copy.

    Args:
        factory: builds the module (its constructor arguments come from the model's config).
        paths: one file or the shards of one checkpoint.
        rename: maps a key in the file to the module's key, or None to skip it (for checkpoints
            whose names differ from ours).

    The key check is strict: a missing or unexpected key raises a WeightsError naming the file(s)
    and the keys. The module comes back in evaluation mode with the dtypes of the file, on the CPU;
    the memory manager decides where and in which precision it runs.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    with parameters_on_meta():
        module = factory()
    files = [MappedFile(path) for path in paths]
    state: dict[str, torch.Tensor] = {}
    source: dict[str, Path] = {}
    for mapped in files:
        for key, tensor in mapped.tensors.items():
            key = rename(key) if rename is not None else key
            if key is None:
                continue
            if key in state:
                raise WeightsError(mapped.path, f"repeats tensor {key!r}, already in {source[key]}")
            state[key], source[key] = tensor, mapped.path
    _fill_module(module, state, ", ".join(str(f.path) for f in files))
    module.file_mappings = files
    return module.eval()


def read_torch_checkpoint(path: str | os.PathLike[str]) -> Any:
    """A ``torch.save`` checkpoint unpickled with ``weights_only=True`` and memory-mapped (no tensor data is read yet).

    A missing, truncated, corrupt, legacy-format or code-carrying file raises a WeightsError naming it.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except OSError as exc:
        raise WeightsError(path, f"cannot be read: {exc.strerror or exc}", hint="check the path and permissions") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad file surfaces as RuntimeError, EOFError, ValueError or an unpickling error
        if "Weights only load failed" in str(exc):
            raise WeightsError(path, f"holds objects other than tensors, which are never unpickled ({_first_line(exc)})",
                               hint="use the checkpoint as released") from None
        raise WeightsError(path, f"is truncated, corrupt or not a zip-format PyTorch checkpoint ({_first_line(exc)})") from None
    return checkpoint


def load_torch_module(
    factory: Callable[[], nn.Module],
    path: str | os.PathLike[str],
    *,
    entry: str | None = None,
    rename: Callable[[str], str | None] | None = None,
) -> nn.Module:
    """Build ``factory()`` and fill it from a ``torch.save`` checkpoint (``.ckpt``, ``.pt``), zero-copy.

    Args:
        factory: builds the module (its constructor arguments come from the model's config).
        path: the checkpoint: a state dict, or a dict of state dicts.
        entry: the state dict to use in a dict of them (e.g. ``"model"``); None for a bare one.
        rename: maps a key in the file to the module's key, or None to skip it (e.g. the point-cloud
            encoder a VAE file carries but image-to-shape never runs).

    The file is unpickled with ``weights_only=True`` (tensors and plain containers only, never
    code) and memory-mapped, so its tensors are read from disk only when touched and host RAM
    never holds them twice. Keys are checked strictly, as in ``load_safetensors_module``; a
    truncated, corrupt or legacy-format file raises a WeightsError naming the file.
    """
    import torch

    checkpoint = read_torch_checkpoint(path)
    state = checkpoint
    if entry is not None:
        if not isinstance(checkpoint, dict) or entry not in checkpoint:
            found = ", ".join(map(repr, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise WeightsError(path, f"has no {entry!r} entry (found: {found or 'nothing'})",
                               hint="check that this is the right checkpoint file for this model")
        state = checkpoint[entry]
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise WeightsError(path, f"does not hold a state dict{f' under {entry!r}' if entry else ''}",
                           hint="check that this is the right checkpoint file for this model")
    if rename is not None:
        renamed = ((rename(key), tensor) for key, tensor in state.items())
        state = {key: tensor for key, tensor in renamed if key is not None}
    with parameters_on_meta():
        module = factory()
    _fill_module(module, state, os.fspath(path))
    module.file_mappings = [TensorMapping(list(state.values()))]
    return module.eval()


class TensorMapping:
    """The memory map ``torch.load(mmap=True)`` put the tensors of one file in: ``owns`` and ``release`` as for MappedFile."""

    def __init__(self, tensors: list[torch.Tensor]):
        spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel()]
        self._start = min((s for s, _ in spans), default=0)
        self._end = max((e for _, e in spans), default=0)

    def owns(self, tensor: torch.Tensor) -> bool:
        return self._start <= tensor.data_ptr() < self._end

    def release(self, tensor: torch.Tensor) -> None:
        """Hand the pages under ``tensor`` back to the kernel; they are re-read from the file if touched again."""
        if not self.owns(tensor) or _madvise is None:
            return
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            _madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)


def _load_madvise() -> Callable[..., int] | None:
    # Only Linux drops private file pages with MADV_DONTNEED (re-reading them from the file later).
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None


_madvise = _load_madvise()


def _fill_module(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Assign ``state``'s tensors to ``module``'s meta parameters, strictly."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        problem = "does not match the model:"
        if missing:
            problem += f" missing {len(missing)} key(s) {_shorten(missing)}"
        if unexpected:
            problem += f" unexpected {len(unexpected)} key(s) {_shorten(unexpected)}"
        raise WeightsError(where, problem, hint="check that these weights belong to this model and version")
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(where, f"does not match the model: {str(exc).strip()}",
                           hint="check that these weights belong to this model and version") from None
    still_meta = [name for name, p in module.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise WeightsError(where, f"leaves parameters unset: {_shorten(still_meta)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _shorten(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
