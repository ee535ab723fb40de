"""The Hunyuan3D-2.1 shape DiT: a plain transformer with long skips and mixture-of-experts feed-forwards.

The diffusion time is a token prepended to the latent tokens; every block self-attends over all
tokens, cross-attends to the image condition and applies an MLP (the last blocks a mixture of
experts). Blocks after the middle one first merge the output of their mirror block before the
middle (a long skip). There is no adaptive normalisation and no positional embedding. Parameter
names follow the release's checkpoint, so its ``model`` state dict loads as it is.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ...memory import load_torch_module
from .config import DiT21Config
from .moe import MoEFeedForward

_EPS = 1e-6
_MAX_PERIOD = 10000


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (unscaled) -> sinusoids (sin first) -> MLP -> one token of ``hidden_size``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.mlp = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Linear(4 * hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.hidden_size // 2
        frequencies = torch.exp(-math.log(_MAX_PERIOD) / half * torch.arange(half, dtype=torch.float32, device=t.device))
        angles = t.float()[:, None] * frequencies[None]
        sinusoids = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(sinusoids).unsqueeze(1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys.

    The release's ``to_q``, ``to_k`` and ``to_v`` are not each one of q, k and v: their outputs,
    concatenated, are per head ``[q | k | v]`` of ``head_dim`` each.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=_EPS)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=_EPS)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = torch.cat([self.to_q(x), self.to_k(x), self.to_v(x)], dim=-1).view(b, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.unbind(dim=3)
        out = F.scaled_dot_product_attention(
            self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttention(nn.Module):
    """Attention from the tokens to the image condition; ``to_k``/``to_v`` outputs are per head ``[k | v]``."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=_EPS)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=_EPS)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.num_heads, self.head_dim)
        kv = torch.cat([self.to_k(context), self.to_v(context)], dim=-1).view(b, context.shape[1], self.num_heads, 2, self.head_dim)
        k, v = kv.unbind(dim=3)
        out = F.scaled_dot_product_attention(
            self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, inner_dim)
        self.fc2 = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DiTBlock(nn.Module):
    """[long skip merge] -> self-attention -> cross-attention -> MLP or mixture of experts, each residual."""

    def __init__(self, config: DiT21Config, index: int):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.attn1 = SelfAttention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.attn2 = CrossAttention(dim, config.context_dim, config.num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=_EPS)
        if config.has_skip(index):
            self.skip_norm = nn.LayerNorm(dim, eps=_EPS)
            self.skip_linear = nn.Linear(2 * dim, dim)
        if config.uses_moe(index):
            self.moe = MoEFeedForward(dim, config.ffn_dim, config.num_experts, config.moe_top_k)
        else:
            self.mlp = MLP(dim, config.ffn_dim)

    @property
    def takes_skip(self) -> bool:
        return hasattr(self, "skip_linear")

    def forward(self, x: torch.Tensor, context: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = self.skip_norm(self.skip_linear(torch.cat([skip, x], dim=-1)))
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        feed_forward = self.moe if hasattr(self, "moe") else self.mlp
        return x + feed_forward(self.norm3(x))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=_EPS)
        self.linear = nn.Linear(dim, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x)[:, 1:])  # the time token is dropped after the norm


class HunyuanDiT21(nn.Module):
    """Predicts the flow-matching velocity of the shape latents given the time and the image condition.

    Args:
        config: the sizes (``DiT21Config()`` is the released model, 3.05 B parameters).
    """

    def __init__(self, config: DiT21Config | None = None):
        super().__init__()
        self.config = config = config or DiT21Config()
        self.x_embedder = nn.Linear(config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(config, index) for index in range(config.depth)])
        self.final_layer = FinalLayer(config.hidden_size, config.in_channels)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """``latents`` [B, L, in_channels], ``t`` [B] in [0, 1] (0 = noise), ``context`` [B, S, context_dim] -> velocity [B, L, in_channels].

        ``guidance`` is the shared sampler's input of guidance-distilled models; this model has none.
        """
        if guidance is not None:
            raise ValueError("Hunyuan3D-2.1's DiT takes no guidance input; guidance is a second, unconditional pass")
        self._check_inputs(latents, t, context)
        x = torch.cat([self.t_embedder(t), self.x_embedder(latents)], dim=1)
        middle = self.config.depth // 2
        skips: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x, context, skips.pop() if block.takes_skip else None)
            if index < middle:
                skips.append(x)
        return self.final_layer(x)

    def stream_units(self) -> list[nn.Module]:
        """The movable units in execution order, for ``stream`` mode.

        Dense blocks move whole. A mixture-of-experts block (340 M parameters at full size) is
        split so that each expert moves alone: its skip projection, its two attentions, then its
        experts (an expert no token chose is not called) and its shared expert. Its norms and gate
        (a few kilobytes) stay with the rest of the model.
        """
        units: list[nn.Module] = []
        for block in self.blocks:
            if not hasattr(block, "moe"):
                units.append(block)
                continue
            if block.takes_skip:
                units.append(block.skip_linear)
            units += [block.attn1, block.attn2, *block.moe.experts, block.moe.shared_experts]
        return units

    def _check_inputs(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        config = self.config
        if latents.ndim != 3 or latents.shape[-1] != config.in_channels:
            raise ValueError(f"latents must be [batch, tokens, {config.in_channels}], got {list(latents.shape)}")
        if t.shape != latents.shape[:1]:
            raise ValueError(f"t must be [batch] = [{latents.shape[0]}], got {list(t.shape)}")
        if context.ndim != 3 or context.shape[0] != latents.shape[0] or context.shape[-1] != config.context_dim:
            raise ValueError(f"context must be [{latents.shape[0]}, tokens, {config.context_dim}], got {list(context.shape)}")


def load_dit(path: str | os.PathLike[str], config: DiT21Config | None = None) -> HunyuanDiT21:
    """The DiT from the release's ``model.fp16.ckpt`` (its ``model`` entry), memory-mapped, on the CPU."""
    return load_torch_module(lambda: HunyuanDiT21(config), path, entry="model")
