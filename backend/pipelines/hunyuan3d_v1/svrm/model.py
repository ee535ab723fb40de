"""SVRM: six views and the condition image -> triplane -> SDF and colour at any point.

The three children carry the official checkpoint's names, so ``svrm/svrm.safetensors``
loads into ``SVRM`` with ``load_state_dict(strict=True)`` unchanged:

- ``img_encoder``: camera-modulated DINOv2 ViT-B/14 (``ImageEncoder``)
- ``img_to_triplane_decoder``: the image-to-triplane transformer (``ImageToTriplane``)
- ``render``: the SDF/colour MLP (``TriplaneSynthesizer``)
"""

from __future__ import annotations

import torch
from torch import nn

from .config import SVRMConfig
from .encoder import ImageEncoder
from .synthesizer import TriplaneSynthesizer
from .transformer import ImageToTriplane

# Checkpoint prefix of each component, by the name the memory manager knows it under.
COMPONENT_PREFIXES = {
    "encoder": "img_encoder.",
    "triplane": "img_to_triplane_decoder.",
    "synthesizer": "render.",
}


def build_component(name: str, config: SVRMConfig) -> nn.Module:
    """One of the three parts on its own, on the current default device."""
    if name == "encoder":
        return ImageEncoder(config.encoder)
    if name == "triplane":
        return ImageToTriplane(config.transformer)
    if name == "synthesizer":
        return TriplaneSynthesizer(config.synthesizer)
    raise KeyError(f"SVRM has no component {name!r}; it has {', '.join(COMPONENT_PREFIXES)}")


class SVRM(nn.Module):
    def __init__(self, config: SVRMConfig | None = None):
        super().__init__()
        self.config = config or SVRMConfig()
        self.img_encoder = build_component("encoder", self.config)
        self.img_to_triplane_decoder = build_component("triplane", self.config)
        self.render = build_component("synthesizer", self.config)

    def encode(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """images (B, V, 3, S, S) normalised, cameras (B, V, 20) -> triplane (B, 3, C, R, R)."""
        return self.img_to_triplane_decoder(self.img_encoder(images, cameras))

    def query(self, triplane: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """triplane (B, 3, C, R, R), points (B, N, 3) in SVRM's frame -> sdf (B, N), rgb (B, N, 3)."""
        return self.render(triplane, points)
