"""Loading the three parts of a combined Hunyuan3D-2 checkpoint as separate modules.

A DiT folder's ``model.fp16.safetensors`` holds ``conditioner.*``, ``model.*`` (the DiT) and
``vae.*`` tensors. Each part is built from the folder's config and filled from its own prefix,
strictly (every key and shape must match), as zero-copy views of one memory map of the file:
host RAM never holds a second copy. The ``vae.*`` part is loaded by ``vae.load_shape_vae``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...memory.loading import load_safetensors_module

if TYPE_CHECKING:
    from torch import nn

    from .config import ModelConfig

CONDITIONER_PREFIX = "conditioner."
DIT_PREFIX = "model."
VAE_PREFIX = "vae."  # loaded by vae.load_shape_vae


def only_prefix(prefix: str) -> Callable[[str], str | None]:
    """A key renamer for ``load_safetensors_module``: keys under ``prefix`` without it; every other key skipped."""
    return lambda key: key[len(prefix):] if key.startswith(prefix) else None


def load_conditioner(path: Path, config: ModelConfig) -> nn.Module:
    from .conditioner import ImageConditioner

    return load_safetensors_module(lambda: ImageConditioner(config.conditioner), path, rename=only_prefix(CONDITIONER_PREFIX))


def load_dit(path: Path, config: ModelConfig) -> nn.Module:
    from .dit import Hunyuan3DDiT

    return load_safetensors_module(lambda: Hunyuan3DDiT(config.dit), path, rename=only_prefix(DIT_PREFIX))

