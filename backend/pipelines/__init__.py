"""Registry of named pipelines.

Model families register themselves explicitly in ``_builtin()``; tests and plug-ins add their
own with ``register`` (the server's ``--pipelines-from MODULE`` imports such a module).
"""

from __future__ import annotations

import importlib

from ..errors import BackendError
from ..protocol import ErrorCode
from .base import Pipeline

_REGISTRY: dict[str, type[Pipeline]] = {}


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
    return sorted(_REGISTRY)


def get(name: str) -> type[Pipeline]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackendError(
            ErrorCode.UNKNOWN_PIPELINE,
            f"no pipeline named {name!r}",
            hint="available: " + (", ".join(names()) or "none"),
        ) from None
