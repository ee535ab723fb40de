"""Nano weights on disk: one safetensors file whose metadata carries the model's config.

The file is read through the memory manager's zero-copy loader, so the pipeline, the tests
and the evaluation all load weights the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...memory import WeightsError, load_safetensors_module, read_safetensors_header
from .model import NanoConfig, NanoModel

CONFIG_KEY = "nano_config"
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nano.safetensors"


def save_weights(model: NanoModel, path: str | os.PathLike[str]) -> None:
    """Write the weights as float32 with the config in the metadata, atomically (write, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    partial = path.with_suffix(path.suffix + ".partial")
    save_file(tensors, str(partial), metadata={CONFIG_KEY: json.dumps(model.config.to_dict())})
    os.replace(partial, path)


def read_config(path: str | os.PathLike[str]) -> NanoConfig:
    metadata = read_safetensors_header(path).metadata
    if CONFIG_KEY not in metadata:
        raise WeightsError(path, "has no Nano config in its metadata", hint="use a file written by the Nano training command")
    try:
        return NanoConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ValueError, TypeError) as exc:
        raise WeightsError(path, f"has an unreadable Nano config: {exc}") from None


def load_model(path: str | os.PathLike[str]) -> NanoModel:
    """The model in evaluation mode on the CPU, in the file's dtype."""
    config = read_config(path)
    return load_safetensors_module(lambda: NanoModel(config), path)
