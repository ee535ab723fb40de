"""Building blocks shared by the encoder and the triplane transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# On MPS, scaled_dot_product_attention may hold the whole score matrix; the triplane's
# 12288 x 12288 self-attention over 16 heads would need ~9 GiB in float32, so queries go in slices.
MPS_SCORE_ELEMENTS = 1 << 27


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_score_elements: int | None = None) -> torch.Tensor:
    """Softmax attention over (batch, heads, tokens, head_dim) tensors, scaled by head_dim^-0.5.

    With ``max_score_elements`` (the default on MPS) the queries go in slices whose score
    matrices hold at most that many elements.
    """
    if max_score_elements is None and q.device.type == "mps":
        max_score_elements = MPS_SCORE_ELEMENTS
    if max_score_elements is None:
        return F.scaled_dot_product_attention(q, k, v)
    rows = max(1, max_score_elements // (q.shape[0] * q.shape[1] * k.shape[2]))
    return torch.cat([F.scaled_dot_product_attention(part, k, v) for part in q.split(rows, dim=2)], dim=2)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' dtype, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
