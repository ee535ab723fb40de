"""Sizes of the SVRM model. The defaults are the official checkpoint's; tests build tiny ones."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EncoderConfig:
    """The camera-modulated DINOv2 ViT image encoder.

    Args:
        width: token width (768 for ViT-B).
        depth: number of transformer blocks.
        heads: attention heads; ``width`` must divide evenly.
        mlp_ratio: hidden width of each block's MLP as a multiple of ``width``.
        patch_size: pixels per patch side.
        pos_embed_grid: side of the learned positional-embedding grid (37 = trained at 518 px);
            it is resampled to the input's patch grid.
        camera_dim: length of each view's camera vector.
        layer_norm_eps: epsilon of the camera-modulated LayerNorms.
    """

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    patch_size: int = 14
    pos_embed_grid: int = 37
    camera_dim: int = 20
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class TriplaneTransformerConfig:
    """The transformer that turns image tokens into a triplane.

    Args:
        plane_tokens: tokens per plane side; the queries are 3 x plane_tokens x plane_tokens.
        width: token width.
        depth: number of blocks (cross-attention, self-attention, GEGLU feed-forward).
        heads: attention heads.
        head_dim: width of each head; heads x head_dim is the attention's inner width.
        ff_mult: the feed-forward's hidden width as a multiple of ``width``.
        context_dim: width of the image tokens (the encoder's ``width``).
        channels: feature channels per triplane texel.
        upsample: each token becomes an upsample x upsample patch of texels.
        block_norm_eps: epsilon of the LayerNorms inside the blocks.
        final_norm_eps: epsilon of the LayerNorm after the last block.
    """

    plane_tokens: int = 64
    width: int = 1024
    depth: int = 16
    heads: int = 16
    head_dim: int = 64
    ff_mult: int = 4
    context_dim: int = 768
    channels: int = 120
    upsample: int = 4
    block_norm_eps: float = 1e-5
    final_norm_eps: float = 1e-6

    @property
    def plane_size(self) -> int:
        """Texels per side of each plane of the triplane."""
        return self.plane_tokens * self.upsample


@dataclass(frozen=True)
class SynthesizerConfig:
    """The MLP that reads SDF and colour at 3D points from the triplane.

    Args:
        channels: feature channels per triplane texel.
        hidden: width of the MLP's hidden layer.
        box_size: side of the cube the triplane spans, centred at the origin.
        initial_inv_std: start value of the NeuS variance parameter (used only by volume rendering).
    """

    channels: int = 120
    hidden: int = 64
    box_size: float = 1.2
    initial_inv_std: float = 0.3


@dataclass(frozen=True)
class SVRMConfig:
    """The whole model.

    Args:
        encoder: the image encoder's sizes.
        transformer: the image-to-triplane transformer's sizes.
        synthesizer: the SDF/colour MLP's sizes.
        image_size: side in pixels every input image is resized to (a multiple of the patch size).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TriplaneTransformerConfig = field(default_factory=TriplaneTransformerConfig)
    synthesizer: SynthesizerConfig = field(default_factory=SynthesizerConfig)
    image_size: int = 504

    def __post_init__(self) -> None:
        if self.transformer.context_dim != self.encoder.width:
            raise ValueError(
                f"transformer.context_dim ({self.transformer.context_dim}) must equal encoder.width ({self.encoder.width})"
            )
        if self.synthesizer.channels != self.transformer.channels:
            raise ValueError(
                f"synthesizer.channels ({self.synthesizer.channels}) must equal transformer.channels ({self.transformer.channels})"
            )
        if self.encoder.width % self.encoder.heads:
            raise ValueError(f"encoder.width ({self.encoder.width}) is not divisible by encoder.heads ({self.encoder.heads})")
        if self.image_size % self.encoder.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is not a multiple of the patch size ({self.encoder.patch_size})")

    @classmethod
    def tiny(cls) -> SVRMConfig:
        """A few-kilobyte model with the same structure, for tests."""
        return cls(
            encoder=EncoderConfig(width=32, depth=2, heads=2, mlp_ratio=2, patch_size=14, pos_embed_grid=3),
            transformer=TriplaneTransformerConfig(
                plane_tokens=4, width=32, depth=2, heads=2, head_dim=16, ff_mult=2, context_dim=32, channels=8, upsample=4
            ),
            synthesizer=SynthesizerConfig(channels=8, hidden=16),
            image_size=28,
        )
