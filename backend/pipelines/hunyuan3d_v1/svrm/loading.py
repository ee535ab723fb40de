"""Reading SVRM checkpoints: the official ``svrm.safetensors`` or a smaller model of ours.

Each component is built on ``meta`` and filled zero-copy from the memory-mapped file by the
memory manager's loader, strictly: a tensor missing, left over or of the wrong shape is an
error that names it. Modules come back on the CPU in the file's dtype; the memory manager
decides where and in which precision they run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ....memory.loading import load_safetensors_module, read_safetensors_header
from .config import EncoderConfig, SVRMConfig, SynthesizerConfig, TriplaneTransformerConfig
from .model import COMPONENT_PREFIXES, SVRM, build_component

# The official file carries no config; checkpoints of other sizes record theirs under this key.
CONFIG_METADATA_KEY = "svrm_config"


def config_to_json(config: SVRMConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str) -> SVRMConfig:
    fields = json.loads(text)
    return SVRMConfig(
        encoder=EncoderConfig(**fields.pop("encoder")),
        transformer=TriplaneTransformerConfig(**fields.pop("transformer")),
        synthesizer=SynthesizerConfig(**fields.pop("synthesizer")),
        **fields,
    )


def read_config(path: str | Path) -> SVRMConfig:
    """The config recorded in the file's metadata, or the official sizes when there is none."""
    text = read_safetensors_header(path).metadata.get(CONFIG_METADATA_KEY)
    return config_from_json(text) if text else SVRMConfig()


def save_checkpoint(model: SVRM, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the model like the official file (every tensor in ``dtype``), with its config in the metadata."""
    state = {key: tensor.detach().to("cpu", dtype).contiguous() for key, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", CONFIG_METADATA_KEY: config_to_json(model.config)})


def load_component(path: str | Path, name: str, config: SVRMConfig | None = None) -> nn.Module:
    """``encoder``, ``triplane`` or ``synthesizer`` from a checkpoint, on the CPU in the file's dtype."""
    config = config or read_config(path)
    prefix = COMPONENT_PREFIXES[name]

    def own_key(key: str) -> str | None:
        return key[len(prefix):] if key.startswith(prefix) else None

    return load_safetensors_module(lambda: build_component(name, config), path, rename=own_key)
