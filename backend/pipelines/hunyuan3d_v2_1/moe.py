"""Mixture-of-experts feed-forward of the 2.1 DiT, computed sparsely.

Each token goes through the ``top_k`` experts its gate scores highest (weighted by those
softmax scores, not renormalised) plus one shared expert. Only the experts some token was
routed to run, each once on all of its tokens gathered together; an expert no token chose is
never called, so its weights are never read. Every expert is its own module, a unit the memory
manager can move alone: in ``stream`` mode the routed experts are on-demand units, and once the
gate has run the layer announces the experts it will call, so an expert no token chose is never
copied to the device (see docs/memory.md).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...memory.streaming import will_call

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle


class GELUProjection(nn.Module):
    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """One expert: ``dim -> inner_dim``, exact GELU, ``-> dim`` (key names as the release's)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        # The middle slot is the release's dropout, kept so the keys read net.0 and net.2.
        self.net = nn.ModuleList([GELUProjection(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class MoEGate(nn.Module):
    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, dim))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` [T, dim] -> (weights [T, top_k], expert indices [T, top_k])."""
        scores = F.linear(tokens, self.weight).softmax(dim=-1)
        weights, experts = torch.topk(scores, self.top_k, dim=-1, sorted=False)
        return weights, experts


class MoEFeedForward(nn.Module):
    """``sum over the top_k experts of gate weight x expert(x)``, plus ``shared_experts(x)``.

    Args:
        dim: token width.
        inner_dim: hidden width of every expert.
        num_experts: routed experts.
        top_k: experts per token.
    """

    def __init__(self, dim: int, inner_dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.experts = nn.ModuleList([FeedForward(dim, inner_dim) for _ in range(num_experts)])
        for expert in self.experts:
            expert.stream_on_demand = True  # stream mode copies it only when a token was routed to it
        self.gate = MoEGate(dim, num_experts, top_k)
        self.shared_experts = FeedForward(dim, inner_dim)

    def forward(self, x: torch.Tensor, *, dense: bool = False) -> torch.Tensor:
        """``dense=True`` runs every expert on every token and masks: the reference the sparse path must equal."""
        tokens = x.reshape(-1, x.shape[-1])
        weights, experts = self.gate(tokens)
        routed = self._routed_dense(tokens, weights, experts) if dense else self._routed_sparse(tokens, weights, experts)
        return (routed + self.shared_experts(tokens)).view(x.shape)

    def _routed_sparse(self, tokens: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        top_k = experts.shape[-1]
        flat_experts = experts.reshape(-1)
        flat_weights = weights.reshape(-1, 1)
        by_expert = flat_experts.argsort(stable=True)
        counts = torch.bincount(flat_experts, minlength=len(self.experts)).tolist()  # one host sync per layer
        will_call(expert for expert, count in zip(self.experts, counts) if count)
        out = torch.zeros_like(tokens)
        start = 0
        for expert, count in zip(self.experts, counts):
            if count == 0:
                continue
            routes = by_expert[start:start + count]
            start += count
            rows = routes // top_k
            # Experts in index order, each adding into zeros: the same summation order as the release.
            out.index_add_(0, rows, expert(tokens[rows]) * flat_weights[routes])
        return out

    def _routed_dense(self, tokens: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        mixing = torch.zeros(tokens.shape[0], len(self.experts), dtype=weights.dtype, device=weights.device)
        mixing.scatter_(1, experts, weights)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            out += expert(tokens) * mixing[:, index:index + 1]
        return out


class ExpertTraffic:
    """Counts the routed-expert weights the forwards inside a ``with`` block really used.

    ``used_bytes`` adds up each expert call's weight bytes (as stored where it ran);
    ``dense_bytes`` is what running every expert at every call of its layer would have read.
    ``calls`` maps (layer name, expert index) to its number of calls.
    """

    def __init__(self, model: nn.Module):
        self._layers = [(name, module) for name, module in model.named_modules() if isinstance(module, MoEFeedForward)]
        self._hooks: list[RemovableHandle] = []
        self.used_bytes = 0
        self.dense_bytes = 0
        self.calls: Counter[tuple[str, int]] = Counter()

    def __enter__(self) -> ExpertTraffic:
        for name, layer in self._layers:
            self._hooks.append(layer.gate.register_forward_hook(lambda _m, _a, _o, layer=layer: self._layer_ran(layer)))
            for index, expert in enumerate(layer.experts):
                self._hooks.append(expert.register_forward_pre_hook(
                    lambda module, _a, key=(name, index): self._expert_ran(key, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.dense_bytes if self.dense_bytes else 0.0

    def _layer_ran(self, layer: MoEFeedForward) -> None:
        self.dense_bytes += sum(_weight_bytes(expert) for expert in layer.experts)

    def _expert_ran(self, key: tuple[str, int], expert: nn.Module) -> None:
        self.calls[key] += 1
        self.used_bytes += _weight_bytes(expert)


def _weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
