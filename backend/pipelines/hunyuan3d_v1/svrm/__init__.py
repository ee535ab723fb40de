"""Our implementation of Hunyuan3D-1's SVRM, weight-compatible with ``svrm/svrm.safetensors``."""

from .config import EncoderConfig, SVRMConfig, SynthesizerConfig, TriplaneTransformerConfig
from .model import COMPONENT_PREFIXES, SVRM, build_component

__all__ = [
    "COMPONENT_PREFIXES",
    "SVRM",
    "EncoderConfig",
    "SVRMConfig",
    "SynthesizerConfig",
    "TriplaneTransformerConfig",
    "build_component",
]
