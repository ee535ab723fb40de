"""Hunyuan3D-2's ShapeVAE, decoder only (the released checkpoints hold no encoder).

Latents (B, L, 64) from the DiT become decoder tokens (B, L, width) through a linear
projection and a pre-norm transformer; the geometry decoder then answers, for any query point
in [-1.01, 1.01]^3, one occupancy logit (positive inside) by cross-attention from the point's
Fourier features to those tokens. ``volume.py`` evaluates it over a grid.

Module and parameter names follow the checkpoint's keys, so the ``vae.`` part of a combined
``model.fp16.safetensors`` (prefix cut) and a VAE-only folder's file (no prefix) both load strictly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...memory.loading import WeightsError, load_safetensors_module
from .config import checked_value

COMBINED_PREFIX = "vae."
# The 2.1 code's "-withencoder" files add these; generation never uses them.
ENCODER_PREFIXES = ("encoder.", "pre_kl.")
LAYER_NORM_EPS = 1e-6
# The geometry decoder's last LayerNorm is built without an eps, so it has torch's default.
LN_POST_EPS = 1e-5
_FIELD_TYPES = {"int": int, "float": float, "bool": bool}


# Sizes of the point-cloud encoder, which Hunyuan3D-2.1's config lists beside the decoder's.
_ENCODER_SETTINGS = frozenset({"num_encoder_layers", "point_feats", "pc_size", "pc_sharpedge_size"})


@dataclass(frozen=True)
class ShapeVAEConfig:
    """The ``vae.params`` of a model folder's config.yaml (defaults as in the official class).

    Args:
        num_latents: latent tokens per shape (3072 for v2-0, 512 for mini).
        embed_dim: width of a latent token (64).
        width: width of the decoder tokens.
        heads: attention heads of the transformer and of the geometry decoder.
        num_decoder_layers: transformer blocks.
        num_freqs: Fourier frequencies per coordinate (2^0 .. 2^(num_freqs-1)).
        include_pi: multiply the frequencies by pi (the released configs say false).
        qkv_bias: biases on the query/key/value projections.
        qk_norm: LayerNorm on each head's queries and keys.
        scale_factor: the DiT's latents are divided by it before decoding.
        geo_decoder_mlp_expand_ratio: hidden width of the geometry decoder's MLP, in widths.
        geo_decoder_downsample_ratio: the geometry decoder works at width // ratio.
        geo_decoder_ln_post: a final LayerNorm in the geometry decoder (also enables its qk_norm).
    """

    num_latents: int
    embed_dim: int = 64
    width: int = 1024
    heads: int = 16
    num_decoder_layers: int = 16
    num_freqs: int = 8
    include_pi: bool = True
    qkv_bias: bool = True
    qk_norm: bool = False
    scale_factor: float = 1.0
    geo_decoder_mlp_expand_ratio: int = 4
    geo_decoder_downsample_ratio: int = 1
    geo_decoder_ln_post: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: str | os.PathLike[str] = "config.yaml") -> ShapeVAEConfig:
        """Check and type the ``params`` mapping (or the whole ``{target, params}`` section).

        Args:
            params: the mapping read from YAML.
            source: the file it came from, named in errors.
        """
        if "params" in params and isinstance(params["params"], Mapping):
            params = params["params"]
        fields = {field.name: field for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in params.items():
            if key in ("drop_path_rate",) or key in _ENCODER_SETTINGS:  # training, or the encoder image-to-shape never runs
                continue
            if key == "label_type":
                if value != "binary":
                    raise WeightsError(source, f"vae label_type {value!r} is not supported (only 'binary')",
                                       hint="use a Hunyuan3D-2 model folder")
                continue
            if key not in fields:
                raise WeightsError(source, f"vae has an unknown setting {key!r}", hint="use a Hunyuan3D-2 model folder")
            values[key] = checked_value(value, _FIELD_TYPES[fields[key].type], source, f"vae {key}")
        if "num_latents" not in values:
            raise WeightsError(source, "vae has no num_latents", hint="check the model folder's config.yaml")
        config = cls(**values)
        ratio = config.geo_decoder_downsample_ratio
        if ratio < 1 or config.width % ratio or config.heads % ratio or config.width % config.heads:
            raise WeightsError(source, f"vae width {config.width}, heads {config.heads} and downsample ratio {ratio} do not divide evenly",
                               hint="check the model folder's config.yaml")
        if config.scale_factor == 0:
            raise WeightsError(source, "vae scale_factor is 0", hint="check the model folder's config.yaml")
        return config

    @property
    def topk_keys(self) -> int:
        """Keys kept per head by FlashVDM's adaptive selection (fixed for the released sizes)."""
        return {3072: 1024, 512: 256}.get(self.num_latents, self.num_latents // 3)


class FourierFeatures(nn.Module):
    """(..., 3) points -> (..., 3 * (2 * num_freqs + 1)): [p, sin(p * f), cos(p * f)], per coordinate."""

    def __init__(self, num_freqs: int, include_pi: bool):
        super().__init__()
        frequencies = 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
        if include_pi:
            frequencies = frequencies * torch.pi
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.out_dim = 3 * (2 * num_freqs + 1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        # (x f0 .. x f7, y f0 .., z f0 ..): each coordinate's frequencies side by side.
        angles = (points[..., None] * self.frequencies).reshape(*points.shape[:-1], -1)
        return torch.cat((points, angles.sin(), angles.cos()), dim=-1)


class HeadNorms(nn.Module):
    """Per-head LayerNorms of queries and keys (identity without qk_norm)."""

    def __init__(self, head_dim: int, enabled: bool):
        super().__init__()
        self.q_norm = nn.LayerNorm(head_dim, eps=LAYER_NORM_EPS) if enabled else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=LAYER_NORM_EPS) if enabled else nn.Identity()


class MLP(nn.Module):
    def __init__(self, width: int, expand_ratio: int = 4):
        super().__init__()
        self.c_fc = nn.Linear(width, width * expand_ratio)
        self.c_proj = nn.Linear(width * expand_ratio, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = HeadNorms(width // heads, qk_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # Each head's slice of c_qkv's output is its own [q | k | v] (not all queries first).
        q, k, v = self.c_qkv(x).view(batch, length, self.heads, -1).chunk(3, dim=-1)
        q, k = self.attention.q_norm(q), self.attention.k_norm(k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.c_proj(out.transpose(1, 2).reshape(batch, length, width))


class ResidualAttentionBlock(nn.Module):
    """One decoder layer: pre-norm self-attention and MLP (what ``stream`` mode moves one at a time)."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(width, heads, qkv_bias, qk_norm)
        self.ln_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, heads: int, layers: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, qkv_bias, qk_norm) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class KeySelection:
    """FlashVDM's adaptive key/value selection for one decoder call.

    The call's query points are consecutive groups (spatially compact: mini-grids or buckets);
    each group attends only to the keys its own sampled queries score highest.

    Args:
        group_sizes: points per group, in order; they sum to the call's point count.
        stride: every ``stride``-th query of a group is sampled to score the keys.
        topk: keys kept per head ('mean' mode).
        mode: 'mean': per head, the ``topk`` keys with the highest mean raw q.k over the
            sampled queries. 'merge': the keys whose softmax(q.k) (unscaled, averaged over heads)
            exceeds 1e-6 for any sampled query, shared by all heads.
    """

    group_sizes: tuple[int, ...]
    stride: int
    topk: int
    mode: str = "mean"


@dataclass
class DecoderKeys:
    """The geometry decoder's keys and values for one shape, (1, heads, L, head_dim) each."""

    keys: torch.Tensor
    values: torch.Tensor


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(width, width, bias=qkv_bias)
        self.c_kv = nn.Linear(width, 2 * width, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = HeadNorms(width // heads, qk_norm)

    def keys_values(self, data: torch.Tensor) -> DecoderKeys:
        batch, length, _ = data.shape
        # Per head [k | v], as for the self-attention's c_qkv.
        k, v = self.c_kv(data).view(batch, length, self.heads, -1).chunk(2, dim=-1)
        return DecoderKeys(self.attention.k_norm(k).transpose(1, 2), v.transpose(1, 2))

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, width) -> the normalised queries, (B, heads, P, head_dim)."""
        batch, length, _ = x.shape
        return self.attention.q_norm(self.c_q(x).view(batch, length, self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: DecoderKeys, selection: KeySelection | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        q = self.queries(x)
        if selection is None:
            out = F.scaled_dot_product_attention(q, kv.keys, kv.values)
        else:
            out = torch.cat([attend_selected(part, kv, selection) for part in q.split(list(selection.group_sizes), dim=2)], dim=2)
        return self.c_proj(out.transpose(1, 2).reshape(batch, length, width))


def attend_selected(q: torch.Tensor, kv: DecoderKeys, selection: KeySelection) -> torch.Tensor:
    """Attention of one group's queries (1, H, P, D) to the keys their sampled queries pick."""
    chosen = chosen_keys(q[:, :, :: selection.stride], kv, selection)
    return F.scaled_dot_product_attention(q, chosen.keys, chosen.values)


def chosen_keys(sampled: torch.Tensor, kv: DecoderKeys, selection: KeySelection) -> DecoderKeys:
    """The keys and values a group attends to, picked by its sampled queries (1, H, S, D) as ``selection.mode`` says."""
    scores = sampled @ kv.keys.transpose(-1, -2)  # raw dot products: no 1/sqrt(d), no softmax
    if selection.mode == "mean":
        chosen = scores.mean(dim=-2).topk(selection.topk, dim=-1).indices
        index = chosen[..., None].expand(-1, -1, -1, kv.values.shape[-1])
        return DecoderKeys(kv.keys.gather(-2, index), kv.values.gather(-2, index))
    active = (scores.softmax(dim=-1).mean(dim=1) > 1e-6).any(dim=1)[0]
    chosen = active.nonzero()[:, 0]
    return DecoderKeys(kv.keys[:, :, chosen], kv.values[:, :, chosen])


class ResidualCrossAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_expand_ratio: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.attn = CrossAttention(width, heads, qkv_bias, qk_norm)
        self.ln_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.ln_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.ln_3 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = MLP(width, mlp_expand_ratio)

    def forward(self, x: torch.Tensor, kv: DecoderKeys, selection: KeySelection | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv, selection)
        return x + self.mlp(self.ln_3(x))


class GeometryDecoder(nn.Module):
    """Query points -> occupancy logits (positive inside) by cross-attention to the decoder tokens."""

    def __init__(self, config: ShapeVAEConfig):
        super().__init__()
        ratio = config.geo_decoder_downsample_ratio
        width, heads = config.width // ratio, config.heads // ratio
        self.fourier_embedder = FourierFeatures(config.num_freqs, config.include_pi)
        self.query_proj = nn.Linear(self.fourier_embedder.out_dim, width)
        self.latents_proj = nn.Linear(width * ratio, width) if ratio != 1 else None
        # Without ln_post the official decoder also drops its qk_norm.
        qk_norm = config.qk_norm and config.geo_decoder_ln_post
        self.cross_attn_decoder = ResidualCrossAttentionBlock(width, heads, config.geo_decoder_mlp_expand_ratio, config.qkv_bias, qk_norm)
        self.ln_post = nn.LayerNorm(width, eps=LN_POST_EPS) if config.geo_decoder_ln_post else None
        self.output_proj = nn.Linear(width, 1)

    def prepare(self, tokens: torch.Tensor) -> DecoderKeys:
        """Keys and values of the decoder tokens, computed once per shape and shared by every query."""
        if self.latents_proj is not None:
            tokens = self.latents_proj(tokens)
        block = self.cross_attn_decoder
        return block.attn.keys_values(block.ln_2(tokens))

    def embed(self, points: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, P, 3) points -> their query tokens: Fourier features in the points' own dtype, then ``dtype``."""
        return self.query_proj(self.fourier_embedder(points).to(dtype))

    def group_keys(self, points: torch.Tensor, kv: DecoderKeys, selection: KeySelection) -> DecoderKeys:
        """The keys and values one FlashVDM group of (1, P, 3) ``points`` attends to, from its sampled queries only.

        Decoding the group in parts with these as ``kv`` (and no selection) gives the values one
        call with ``selection`` gives, in less memory: each point's query is its own row.
        """
        x = self.embed(points[:, :: selection.stride], kv.keys.dtype)
        block = self.cross_attn_decoder
        return chosen_keys(block.attn.queries(block.ln_1(x)), kv, selection)

    def forward(self, points: torch.Tensor, kv: DecoderKeys, selection: KeySelection | None = None) -> torch.Tensor:
        """(B, P, 3) points -> (B, P) logits.

        Args:
            points: query coordinates; their Fourier features are computed in the points' own
                dtype, then cast to the decoder's (as the official decoder does).
            kv: from ``prepare``.
            selection: FlashVDM key selection for this call, or None to attend to every token.
        """
        x = self.cross_attn_decoder(self.embed(points, kv.keys.dtype), kv, selection)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return self.output_proj(x)[..., 0]


class ShapeVAE(nn.Module):
    """The decoder-only ShapeVAE of Hunyuan3D-2 (v2-0, mini, mv and the turbo VAE files).

    Args:
        config: sizes from the model folder's ``vae`` section (``ShapeVAEConfig.from_params``).
    """

    def __init__(self, config: ShapeVAEConfig):
        super().__init__()
        self.config = config
        self.post_kl = nn.Linear(config.embed_dim, config.width)
        self.transformer = Transformer(config.width, config.heads, config.num_decoder_layers, config.qkv_bias, config.qk_norm)
        self.geo_decoder = GeometryDecoder(config)

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder layers, in execution order (the memory manager streams them one by one)."""
        return self.transformer.resblocks

    def latents_to_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's final latents (B, num_latents, embed_dim), still scaled -> decoder tokens (B, num_latents, width).

        Args:
            latents: as sampled, before the division by ``scale_factor`` (done here).
        """
        expected = (self.config.num_latents, self.config.embed_dim)
        if latents.ndim != 3 or tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents must be (batch, {expected[0]}, {expected[1]}), got {tuple(latents.shape)}")
        # The official pipeline multiplies by 1/scale_factor (a Python float) rather than dividing.
        latents = (1.0 / self.config.scale_factor) * latents
        return self.transformer(self.post_kl(latents))

    forward = latents_to_tokens


def load_shape_vae(path: str | os.PathLike[str], config: ShapeVAEConfig, *, combined: bool) -> ShapeVAE:
    """Build a ShapeVAE and fill it, memory-mapped and strictly, from a safetensors file.

    Args:
        path: a DiT folder's combined ``model.fp16.safetensors`` (``combined=True``: only its
            ``vae.`` keys are read, prefix cut), or a VAE-only folder's file (``combined=False``:
            keys without prefix, as in ``hunyuan3d-vae-v2-0-turbo``; encoder keys of the
            ``-withencoder`` files are skipped).
        config: the sizes, from the same folder's config.yaml.
        combined: which of the two layouts ``path`` has.
    """

    def rename(key: str) -> str | None:
        if combined:
            return key[len(COMBINED_PREFIX):] if key.startswith(COMBINED_PREFIX) else None
        return None if key.startswith(ENCODER_PREFIXES) else key

    return load_safetensors_module(lambda: ShapeVAE(config), path, rename=rename)
