"""Reading SVRM checkpoints: the official ``svrm.safetensors`` or a smaller model of ours.

Modules are built on the ``meta`` device and take the file's tensors directly (no random
initialisation, no second copy), and every load is strict: a tensor missing, left over or of
the wrong shape is an error that names it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import EncoderConfig, SVRMConfig, SynthesizerConfig, TriplaneTransformerConfig
from .model import COMPONENT_PREFIXES, SVRM, build_component

# The official file carries no config; checkpoints of other sizes record theirs under this key.
CONFIG_METADATA_KEY = "svrm_config"


class CheckpointMismatch(ValueError):
    """The file's tensors do not fit the model: it is not an SVRM checkpoint of this size."""


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
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    text = metadata.get(CONFIG_METADATA_KEY)
    return config_from_json(text) if text else SVRMConfig()


def save_checkpoint(model: SVRM, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the model like the official file (all tensors in ``dtype``), with its config in the metadata."""
    state = {key: tensor.detach().to("cpu", dtype).contiguous() for key, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", CONFIG_METADATA_KEY: config_to_json(model.config)})


def load_into(module: nn.Module, path: str | Path, prefix: str, dtype: torch.dtype) -> nn.Module:
    """Fill a module built on ``meta`` with the file's tensors under ``prefix``, strictly, in ``dtype`` on the CPU.

    Storage-to-compute conversion (float16 on disk -> float32 for the CPU) happens here, once.
    """
    expected = module.state_dict()
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = [name for name in f.keys() if name.startswith(prefix)]  # noqa: SIM118 (safe_open is not iterable)
        for name in names:
            key = name[len(prefix):]
            if key in expected:
                state[key] = f.get_tensor(name).to(dtype)
    unexpected = sorted({name[len(prefix):] for name in names} - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = sorted(f"{key} {tuple(state[key].shape)} (model {tuple(expected[key].shape)})"
                   for key in state if state[key].shape != expected[key].shape)
    if unexpected or missing or wrong:
        problems = [f"{label}: {', '.join(prefix + k for k in keys[:5])}{' ...' if len(keys) > 5 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointMismatch(f"{Path(path).name} does not match the SVRM model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_component(path: str | Path, name: str, dtype: torch.dtype, config: SVRMConfig | None = None) -> nn.Module:
    """One of ``encoder``, ``triplane``, ``synthesizer`` from a checkpoint, on the CPU in ``dtype``."""
    config = config or read_config(path)
    with torch.device("meta"):
        module = build_component(name, config)
    return load_into(module, path, COMPONENT_PREFIXES[name], dtype)


def load_svrm(path: str | Path, dtype: torch.dtype = torch.float32, config: SVRMConfig | None = None) -> SVRM:
    """The whole model from a checkpoint, on the CPU in ``dtype``."""
    config = config or read_config(path)
    with torch.device("meta"):
        model = SVRM(config)
    return load_into(model, path, "", dtype)
