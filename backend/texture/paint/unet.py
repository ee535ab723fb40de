"""The 2.5D UNet of Hunyuan3D-2 Paint: two Stable Diffusion 2 UNets with attention across views.

Parameters and their names are those of the released ``unet/diffusion_pytorch_model.bin``:

- ``unet``: the denoiser, a diffusers ``UNet2DConditionModel`` built from ``unet/config.json``
  whose ``conv_in`` takes the noisy latents, the normal-map latents and the position-map latents
  stacked (three times the latent channels); its ``class_embedding`` turns a camera index into
  a vector added to the timestep embedding; ``learned_text_clip_gen`` and
  ``learned_text_clip_ref`` are the prompt embeddings (there is no prompt).
- ``unet_dual``: the reference UNet, the same architecture with the plain ``conv_in``; it runs
  once on the reference picture's latents (timestep 0) and each transformer block records its
  normalised input.
- every transformer block of the denoiser gains ``attn_refview`` (its tokens attend to the
  recorded reference tokens of the same layer) and ``attn_multiview`` (the tokens of all views
  attend to each other), added after its self-attention, before the cross-attention.

The blocks keep the wrapped diffusers block under ``transformer``, so the released keys load
strictly (``...transformer_blocks.0.transformer.attn1.to_q.weight``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

# Camera indices of the released model: 5 reference slots, then 12 azimuths at each of three
# elevations (-20, 0, 20) and 4 each for the poles (-90, 90).
REFERENCE_SLOTS = 5
VIEW_SLOTS = 12 * 3 + 4 * 2
PROMPT_TOKENS = 77
_CONFIG_CLASSES = ("UNet2DConditionModel", "UNet2p5DConditionModel")
_ELEVATION_BASE = {-20: 0, 0: 12, 20: 24, -90: 36, 90: 40}
_AZIMUTHS_PER_SLOT = {-20: 1, 0: 1, 20: 1, -90: 3, 90: 3}


def camera_index(azimuth: float, elevation: float) -> int:
    """The camera index of a generated view (before the reference slots are added), as the release encodes it.

    Azimuths go in 30-degree steps counted from 270 (index 0 at elevation 0 is azimuth 270); at the
    poles the 12 steps fold into 4 slots.
    """
    if int(elevation) != elevation or int(elevation) not in _ELEVATION_BASE:
        raise ValueError(f"the paint model knows elevations {sorted(_ELEVATION_BASE)}, not {elevation}")
    if azimuth % 30:
        raise ValueError(f"the paint model knows azimuths in steps of 30 degrees, not {azimuth}")
    elevation = int(elevation)
    step = (int(azimuth // 30) + 9) % 12
    return step // _AZIMUTHS_PER_SLOT[elevation] + _ELEVATION_BASE[elevation]


@dataclass
class ViewAttention:
    """What the 2.5D blocks need to know about the current call (shared by all blocks of one model).

    ``record`` is set while the reference UNet runs: each block stores its normalised input under
    its name in ``reference``. Otherwise ``views`` is the number of views per sample,
    ``reference_rows`` the rows of the batch that attend to the reference (None: none do), and
    ``multiview_masks`` (turbo) which tokens of the views may attend to which, by the joint
    token count of the layer (a layer without a mask attends to all).
    """

    record: bool = False
    views: int = 1
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_rows: slice | None = None
    multiview_masks: dict[int, torch.Tensor] = field(default_factory=dict)


class ViewTransformerBlock(nn.Module):
    """A diffusers ``BasicTransformerBlock`` (layer-norm type) with reference and multiview attention.

    Args:
        transformer: the block it wraps (its weights keep their names under ``transformer.``).
        name: the block's place in the UNet, the key of its recorded reference tokens.
        state: the model's shared ``ViewAttention``.
        extra_attention: build ``attn_refview`` and ``attn_multiview`` (the denoiser's blocks);
            the reference UNet's blocks only record.
    """

    def __init__(self, transformer: nn.Module, name: str, state: ViewAttention, *, extra_attention: bool):
        from diffusers.models.attention_processor import Attention

        super().__init__()
        if getattr(transformer, "norm_type", None) != "layer_norm" or transformer.only_cross_attention or transformer.pos_embed is not None:
            raise ValueError("the paint UNet's transformer blocks must be plain layer-norm blocks (Stable Diffusion 2 style)")
        self.transformer = transformer
        self.name = name
        self.state = state
        if extra_attention:
            self_attention = transformer.attn1

            def attention() -> nn.Module:
                return Attention(query_dim=self_attention.query_dim, heads=self_attention.heads,
                                 dim_head=self_attention.inner_dim // self_attention.heads,
                                 bias=self_attention.to_q.bias is not None, upcast_attention=self_attention.upcast_attention,
                                 out_bias=True)

            self.attn_multiview = attention()
            self.attn_refview = attention()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
                class_labels: torch.Tensor | None = None, added_cond_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        block, state = self.transformer, self.state
        normed = block.norm1(hidden_states)
        hidden_states = hidden_states + block.attn1(normed, attention_mask=attention_mask)
        rows, tokens, channels = normed.shape
        if state.record:
            state.reference[self.name] = normed.reshape(rows // state.views, state.views * tokens, channels)
        elif hasattr(self, "attn_refview"):
            if state.reference_rows is not None:
                selected = state.reference_rows
                reference = state.reference[self.name]
                per_view = reference.repeat_interleave(state.views, dim=0)
                hidden_states = hidden_states.clone()
                hidden_states[selected] += self.attn_refview(normed[selected], encoder_hidden_states=per_view)
            if state.views > 1:
                joint = normed.reshape(rows // state.views, state.views * tokens, channels)
                mask = state.multiview_masks.get(joint.shape[1])
                hidden_states = hidden_states + self.attn_multiview(joint, attention_mask=mask).reshape(rows, tokens, channels)
        if block.attn2 is not None:
            hidden_states = hidden_states + block.attn2(block.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                                                        attention_mask=encoder_attention_mask)
        return hidden_states + block.ff(block.norm3(hidden_states))


def _wrap_transformer_blocks(unet: nn.Module, state: ViewAttention, *, extra_attention: bool) -> int:
    """Replace every transformer block of ``unet`` by a ViewTransformerBlock named as the release names them."""
    from diffusers.models.attention import BasicTransformerBlock

    groups = [(f"down_{i}", block) for i, block in enumerate(unet.down_blocks)]
    groups += [("mid", unet.mid_block)] + [(f"up_{i}", block) for i, block in enumerate(unet.up_blocks)]
    count = 0
    for prefix, group in groups:
        for a, attention in enumerate(getattr(group, "attentions", None) or []):
            for t, transformer in enumerate(attention.transformer_blocks):
                if isinstance(transformer, BasicTransformerBlock):
                    attention.transformer_blocks[t] = ViewTransformerBlock(transformer, f"{prefix}_{a}_{t}", state,
                                                                           extra_attention=extra_attention)
                    count += 1
    return count


class MultiviewUNet(nn.Module):
    """The paint model's UNet pair; ``config`` is the released ``unet/config.json`` (a ``UNet2DConditionModel`` config)."""

    def __init__(self, config: dict[str, Any]):
        from diffusers import UNet2DConditionModel

        super().__init__()
        self.state = ViewAttention()
        self.unet: UNet2DConditionModel = UNet2DConditionModel.from_config(config)
        self.unet_dual: UNet2DConditionModel = UNet2DConditionModel.from_config(config)
        _wrap_transformer_blocks(self.unet_dual, self.state, extra_attention=False)
        if not _wrap_transformer_blocks(self.unet, self.state, extra_attention=True):
            raise ValueError("the paint UNet config has no cross-attention blocks")
        latent_channels = self.unet.config.in_channels
        conv = self.unet.conv_in
        # The denoiser sees the noisy latents, the normal latents and the position latents.
        self.unet.conv_in = nn.Conv2d(3 * latent_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                                      padding=conv.padding)
        text_width = self.unet.config.cross_attention_dim
        self.unet.learned_text_clip_gen = nn.Parameter(torch.zeros(1, PROMPT_TOKENS, text_width))
        self.unet.learned_text_clip_ref = nn.Parameter(torch.zeros(1, PROMPT_TOKENS, text_width))
        self.unet.class_embedding = nn.Embedding(REFERENCE_SLOTS + VIEW_SLOTS, self.unet.time_embedding.linear_2.out_features)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    def blocks(self) -> list[nn.Module]:
        """The movable units for ``stream`` mode, in the order a paint run calls them (reference UNet first)."""
        from ...pipelines.hunyuan3d_v1.components import unet_blocks

        return [*unet_blocks(self.unet_dual), *unet_blocks(self.unet)]

    def record_reference(self, reference_latents: torch.Tensor, cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the reference UNet on (B, R, C, h, w) latents at timestep 0; returns each block's tokens (B, R * tokens, width)."""
        batch, count = reference_latents.shape[:2]
        text = self.unet.learned_text_clip_ref.expand(batch * count, -1, -1)
        self.state.record, self.state.views = True, count
        self.state.reference = {}
        try:
            self.unet_dual(reference_latents.flatten(0, 1), 0, encoder_hidden_states=text, class_labels=cameras.flatten(),
                           return_dict=False)
            return self.state.reference
        finally:
            self.state.record, self.state.reference = False, {}

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: torch.Tensor, normals: torch.Tensor,
                positions: torch.Tensor, cameras: torch.Tensor, reference: dict[str, torch.Tensor] | None = None,
                reference_rows: slice | None = None, multiview_masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Noise prediction for (B, N, C, h, w) latents of N views; returns (B * N, C, h, w).

        Args:
            text: (B, tokens, width) prompt embeddings, shared by the views of a sample.
            normals, positions: (B, N, C, h, w) latents of the condition images.
            cameras: (B, N) camera indices of the views (``camera_index``).
            reference: ``record_reference``'s tokens, for the samples selected by ``reference_rows``.
            reference_rows: which samples (a slice over B) attend to the reference; None: none.
            multiview_masks: (B, tokens, tokens) boolean masks of the multiview attention by joint
                token count (``multiview_masks``; the turbo model's), True where attention is allowed.
        """
        batch, views = latents.shape[:2]
        sample = torch.cat([latents, normals, positions], dim=2).flatten(0, 1)
        per_view_text = text.repeat_interleave(views, dim=0)
        rows = None if reference_rows is None else slice(reference_rows.start * views, reference_rows.stop * views)
        self.state.views, self.state.reference, self.state.reference_rows = views, reference or {}, rows
        self.state.multiview_masks = multiview_masks or {}
        try:
            return self.unet(sample, timestep, encoder_hidden_states=per_view_text,
                             class_labels=(cameras + REFERENCE_SLOTS).flatten(), return_dict=False)[0]
        finally:
            self.state.views, self.state.reference, self.state.reference_rows, self.state.multiview_masks = 1, {}, None, {}


def read_unet_config(folder: Path) -> dict[str, Any]:
    from ...memory.loading import WeightsError

    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(path, f"is not readable ({exc})", hint="download the paint folder again") from None
    # The folder's model_index.json calls the model UNet2p5DConditionModel; its config is that of the UNets inside.
    if not isinstance(config, dict) or config.get("_class_name", "UNet2DConditionModel") not in _CONFIG_CLASSES:
        raise WeightsError(path, "is not a UNet2DConditionModel config", hint="download the paint folder again")
    return {key: value for key, value in config.items() if key != "_class_name"}


# Turbo: the multiview attention at these token grids is limited to tokens whose surface points lie
# within one grid cell's diagonal of each other (1.73 / grid in the position images' unit cube).
TURBO_MASK_GRIDS = (32, 16, 8)
_MIN_COVERED_PIXELS = 5


def multiview_masks(position_pixels: torch.Tensor, grids: tuple[int, ...] = TURBO_MASK_GRIDS) -> dict[int, torch.Tensor]:
    """The turbo model's multiview attention masks from (B, N, 3, H, W) position images in [0, 1] (white: no surface).

    At each grid size G, a token is the mean position of the covered pixels of its cell (the
    origin when fewer than 5 are covered); two tokens of any views may attend to each other when
    those points are closer than sqrt(3) / G (1.73 / G upstream). Returns {N * G * G: (B, N*G*G, N*G*G) bool}.
    """
    batch, views, _, height, width = position_pixels.shape
    covered = (position_pixels != 1).all(dim=2, keepdim=True)
    masks = {}
    for grid in grids:
        if height % grid or width % grid:
            raise ValueError(f"position images of {height}x{width} pixels do not split into a {grid}x{grid} grid")
        pooled = (position_pixels * covered).unflatten(3, (grid, height // grid)).unflatten(5, (grid, width // grid)).sum(dim=(4, 6))
        counts = covered.unflatten(3, (grid, height // grid)).unflatten(5, (grid, width // grid)).sum(dim=(4, 6))
        points = pooled / counts.clamp(min=1)
        points = points * (counts >= _MIN_COVERED_PIXELS)
        points = points.permute(0, 1, 3, 4, 2).reshape(batch, views * grid * grid, 3)
        points = points.float()
        masks[views * grid * grid] = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist") < 1.73 / grid
    return masks
