"""``Hunyuan3DDiT``: the flow-matching transformer that turns noise into shape latents.

A Flux-style transformer without positional encoding: the latent tokens and the image tokens
first run side by side through double-stream blocks (separate weights, joint attention), then
as one sequence through single-stream blocks. It predicts the velocity (data minus noise) of
the latents at time t, where t runs from 0 (noise) to 1 (data). Attribute names follow the
official checkpoint's ``model.*`` keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig

TIME_EMBED_DIM = 256
# The official code passes its time factor where the embedding expects ``max_period``, so both
# are 1000; the checkpoints were trained this way.
TIME_FACTOR = 1000.0
MAX_PERIOD = 1000.0
NORM_EPS = 1e-6


def timestep_embedding(t: torch.Tensor, dim: int = TIME_EMBED_DIM) -> torch.Tensor:
    """[B, dim] sinusoidal embedding of ``TIME_FACTOR * t``: cosines first, then sines, in t's dtype.

    ``TIME_FACTOR * t`` is formed in t's own dtype (float16 on GPUs, as upstream) before the
    float32 trigonometry.
    """
    t = TIME_FACTOR * t
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(t.dtype)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)
        return normed.to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(like.dtype), self.key_norm(k).to(like.dtype)


def split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, 3*H*D] laid out as all queries, all keys, all values -> three [B, H, L, D]."""
    batch, length, width = qkv.shape
    q, k, v = qkv.view(batch, length, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    return q, k, v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention over [B, H, L, D]; returns [B, L, H*D]."""
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


class Modulation(nn.Module):
    """Shift, scale and gate vectors from the time (and guidance) embedding: 3 sets, or 6 for double blocks."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.sets = sets
        self.lin = nn.Linear(dim, sets * dim)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.sets, dim=-1)


class SelfAttention(nn.Module):
    """The double block's per-stream projections; the attention itself is joint across streams."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (1 + scale) * F.layer_norm(x, x.shape[-1:], eps=NORM_EPS) + shift


class DoubleStreamBlock(nn.Module):
    """Latent tokens (``img``) and image tokens (``txt``): separate weights, one attention over [txt; img]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, hidden = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
        self.heads = config.num_heads
        self.img_mod = Modulation(dim, 6)
        self.img_attn = SelfAttention(dim, config.num_heads, config.qkv_bias)
        self.img_mlp = _mlp(dim, hidden)
        self.txt_mod = Modulation(dim, 6)
        self.txt_attn = SelfAttention(dim, config.num_heads, config.qkv_bias)
        self.txt_mlp = _mlp(dim, hidden)

    def _qkv(self, x: torch.Tensor, attn: SelfAttention, shift: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v = split_qkv(attn.qkv(_modulate(x, shift, scale)), self.heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = self.img_mod(vec)
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = self.txt_mod(vec)
        img_q, img_k, img_v = self._qkv(img, self.img_attn, img_shift1, img_scale1)
        txt_q, txt_k, txt_v = self._qkv(txt, self.txt_attn, txt_shift1, txt_scale1)
        joint = attention(torch.cat([txt_q, img_q], dim=2), torch.cat([txt_k, img_k], dim=2), torch.cat([txt_v, img_v], dim=2))
        txt_out, img_out = joint[:, :txt.shape[1]], joint[:, txt.shape[1]:]
        img = img + img_gate1 * self.img_attn.proj(img_out)
        img = img + img_gate2 * self.img_mlp(_modulate(img, img_shift2, img_scale2))
        txt = txt + txt_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + txt_gate2 * self.txt_mlp(_modulate(txt, txt_shift2, txt_scale2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One sequence; attention and MLP in parallel from one input projection (``linear1``) into one output (``linear2``)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.hidden_size
        self.heads = config.num_heads
        self.mlp_hidden = int(dim * config.mlp_ratio)
        self.linear1 = nn.Linear(dim, 3 * dim + self.mlp_hidden)
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.norm = QKNorm(dim // config.num_heads)
        self.modulation = Modulation(dim, 3)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(_modulate(x, shift, scale)).split([x.shape[-1] * 3, self.mlp_hidden], dim=-1)
        q, k, v = split_qkv(qkv, self.heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat([attention(q, k, v), F.gelu(mlp, approximate="tanh")], dim=2))
        return x + gate * out


class LastLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear(_modulate(x, shift[:, None], scale[:, None]))


class Hunyuan3DDiT(nn.Module):
    """Velocity of latents [B, L, in_channels] at times t [B], given image tokens [B, T, context_in_dim]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.latent_in = nn.Linear(config.in_channels, dim)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, dim)
        self.cond_in = nn.Linear(config.context_in_dim, dim)
        if config.guidance_embed:
            self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(config) for _ in range(config.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(config) for _ in range(config.depth_single_blocks))
        self.final_layer = LastLayer(dim, config.in_channels)

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks in execution order (the memory manager's movable units)."""
        return [*self.double_blocks, *self.single_blocks]

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        latent = self.latent_in(x)
        vec = self.time_in(timestep_embedding(t).to(latent.dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("a guidance-distilled model needs the guidance scale as input")
            vec = vec + self.guidance_in(timestep_embedding(guidance))
        cond = self.cond_in(condition)
        for block in self.double_blocks:
            latent, cond = block(latent, cond, vec)
        joined = torch.cat([cond, latent], dim=1)
        for block in self.single_blocks:
            joined = block(joined, vec)
        return self.final_layer(joined[:, cond.shape[1]:], vec)
