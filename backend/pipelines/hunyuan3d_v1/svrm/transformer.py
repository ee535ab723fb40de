"""The image-to-triplane transformer: learned triplane queries attend to the image tokens.

Attribute names follow the official checkpoint (``img_to_triplane_decoder.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TriplaneTransformerConfig
from .layers import Fp32LayerNorm, attention, merge_heads, split_heads


class Attention(nn.Module):
    """Multi-head attention without q/k/v bias; keys and values come from ``context`` when given."""

    def __init__(self, width: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out(merge_heads(attention(q, k, v)))


class GEGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        # Index 1 was a zero-probability dropout; the Identity keeps the checkpoint's numbering.
        self.net = nn.Sequential(GEGLU(width, hidden), nn.Identity(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TriplaneBlock(nn.Module):
    """Pre-norm block: cross-attention to the image, self-attention over the triplane, feed-forward."""

    def __init__(self, config: TriplaneTransformerConfig):
        super().__init__()
        width, eps = config.width, config.block_norm_eps
        self.attn1 = Attention(width, config.heads, config.head_dim, config.context_dim)
        self.attn2 = Attention(width, config.heads, config.head_dim, width)
        self.ff = FeedForward(width, width * config.ff_mult)
        self.norm1 = Fp32LayerNorm(width, eps=eps)
        self.norm2 = Fp32LayerNorm(width, eps=eps)
        self.norm3 = Fp32LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context)
        x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class TriplaneTransformer(nn.Module):
    def __init__(self, config: TriplaneTransformerConfig):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(TriplaneBlock(config) for _ in range(config.depth))
        self.norm = Fp32LayerNorm(config.width, eps=config.final_norm_eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            x = block(x, context)
        return self.norm(x)


class ImageToTriplane(nn.Module):
    """Image tokens (B, L, context_dim) -> triplane (B, 3, channels, plane_size, plane_size).

    The queries are the learned ``pos_emb``, ordered plane-major then row-major. After the
    transformer one linear layer turns each token into an upsample x upsample patch of texels
    (a pixel shuffle), which is how 64 x 64 tokens become a 256 x 256 plane.
    """

    def __init__(self, config: TriplaneTransformerConfig):
        super().__init__()
        self.config = config
        self.pos_emb = nn.Parameter(torch.zeros(1, 3 * config.plane_tokens**2, config.width))
        self.img_to_triplane_decoder = TriplaneTransformer(config)
        self.upsampler = nn.Linear(config.width, config.channels * config.upsample**2)
        nn.init.normal_(self.pos_emb, std=1 / config.width**0.5)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        config = self.config
        batch, side, up = len(context), config.plane_tokens, config.upsample
        queries = self.pos_emb.to(context.dtype).expand(batch, -1, -1)
        texels = self.upsampler(self.img_to_triplane_decoder(queries, context))
        texels = texels.view(batch, 3, side, side, config.channels, up, up)
        # (b, plane, row, col, channel, dy, dx) -> (b, plane, channel, row, dy, col, dx)
        return texels.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, 3, config.channels, side * up, side * up)
