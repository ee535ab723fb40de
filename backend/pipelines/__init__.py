"""Registry of named pipelines.

Model families register themselves explicitly in ``_builtin()``; tests and plug-ins add their
own with ``register`` (the server's ``--pipelines-from MODULE`` imports such a module).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection

from ..errors import BackendError
from ..protocol import ErrorCode
from .base import Pipeline

_REGISTRY: dict[str, type[Pipeline]] = {}
# Model families shipped with the backend; imported on first use (their modules import no torch at top level).
_BUILTIN_MODULES: tuple[str, ...] = (
    "backend.pipelines.hunyuan3d_v1.svrm_pipeline",
    "backend.pipelines.hunyuan3d_v1.pipeline",
    "backend.pipelines.hunyuan3d_v2.pipeline",
    "backend.pipelines.hunyuan3d_v2_1.pipeline",
    "backend.pipelines.nano.pipeline",
    "backend.texture.pipeline",
)
# What ``--model auto`` tries, best first.
AUTO_PREFERENCE = (
    "hunyuan3d-2.1", "hunyuan3d-2-turbo", "hunyuan3d-2-fast", "hunyuan3d-2", "hunyuan3d-2mini-turbo", "hunyuan3d-2mini-fast", "hunyuan3d-2mini",
    "hunyuan3d-2mv-turbo", "hunyuan3d-2mv-fast", "hunyuan3d-2mv", "hunyuan3d-1-std", "hunyuan3d-1-lite", "nano",
)
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def register(cls: type[Pipeline]) -> type[Pipeline]:
    """Add a pipeline class under its ``name``; usable as a class decorator."""
    _REGISTRY[cls.name] = cls
    return cls


def load_plugin(module: str) -> None:
    """Import a module that registers pipelines, with a clear error when it can't be imported."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(ErrorCode.UNKNOWN_PIPELINE, f"cannot import pipeline module {module!r}: {exc}",
                           hint="check the module name and that it is on PYTHONPATH") from None


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> type[Pipeline]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackendError(
            ErrorCode.UNKNOWN_PIPELINE,
            f"no pipeline named {name!r}",
            hint="available: " + (", ".join(names()) or "none"),
        ) from None


def first_preferred(accepts: Callable[[str], bool]) -> str | None:
    """The first registered pipeline of AUTO_PREFERENCE that ``accepts`` (called in that order, until one does)."""
    _load_builtins()
    return next((name for name in AUTO_PREFERENCE if name in _REGISTRY and accepts(name)), None)


def best_available(weights_dir: str | None = None, given: Collection[str] = ()) -> str | None:
    """The first pipeline of AUTO_PREFERENCE that takes the ``given`` inputs and whose weights are present."""

    def usable(name: str) -> bool:
        cls = _REGISTRY[name]
        return set(given) <= set(cls.inputs) and cls(weights_dir=weights_dir).check_weights().ready

    return first_preferred(usable)


def choose(name: str, weights_dir: str | None = None, given: Collection[str] = ()) -> str:
    """Resolve ``auto`` to the best pipeline for the ``given`` inputs whose weights are present; check any other name exists."""
    if name != "auto":
        get(name)
        return name
    best = best_available(weights_dir, given)
    if best is not None:
        return best
    takes = f" that takes {' and '.join(sorted(given))}" if given else ""
    raise BackendError(
        ErrorCode.WEIGHTS_MISSING,
        f"no model{takes} has its weights present (tried " + ", ".join(AUTO_PREFERENCE) + ")",
        hint="run `python -m backend doctor` to see what is missing and how to download it, or pass --model",
    )
