"""Sizes of the Hunyuan3D-2.1 shape DiT. The defaults are the released model's; tests build tiny ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

# Options of the released config.yaml whose only supported value is the one the release uses;
# anything else would need layers this model does not have.
_FIXED_OPTIONS = {
    "qk_norm": True,
    "qk_norm_type": "rms",
    "norm_type": "layer",
    "qkv_bias": False,
    "use_pos_emb": False,
    "use_attention_pooling": False,
    "with_decoupled_ca": False,
    "guidance_cond_proj_dim": None,
}
# Options that do not change the layers or weights of a model with the options above (the
# official code sizes every MLP at 4x whatever ``mlp_ratio`` says).
_IGNORED_OPTIONS = {"input_size", "text_len", "mlp_ratio", "decoupled_ca_dim", "decoupled_ca_weight",
                    "additional_cond_hidden_state"}


@dataclass(frozen=True)
class DiT21Config:
    """The 2.1 DiT (``HunYuanDiTPlain`` in the official code).

    Args:
        in_channels: width of each latent token (the ShapeVAE's ``embed_dim``).
        hidden_size: width of the transformer; ``num_heads`` must divide it.
        context_dim: width of the image-condition tokens (DINOv2-L: 1024).
        depth: number of blocks. Blocks after the middle one (``depth // 2``) take a long skip
            from the mirror block before it.
        num_heads: attention heads, for self- and cross-attention.
        num_moe_layers: the last this-many blocks use a mixture of experts instead of one MLP.
        num_experts: routed experts per mixture-of-experts block (a shared expert comes on top).
        moe_top_k: experts each token is routed to.
    """

    in_channels: int = 64
    hidden_size: int = 2048
    context_dim: int = 1024
    depth: int = 21
    num_heads: int = 16
    num_moe_layers: int = 6
    num_experts: int = 8
    moe_top_k: int = 2
    # No guidance-distilled 2.1 model was released: guidance is always a second, unconditional pass.
    guidance_embed: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads})")
        if not 0 <= self.num_moe_layers <= self.depth:
            raise ValueError(f"num_moe_layers ({self.num_moe_layers}) must be between 0 and depth ({self.depth})")
        if not 1 <= self.moe_top_k <= self.num_experts:
            raise ValueError(f"moe_top_k ({self.moe_top_k}) must be between 1 and num_experts ({self.num_experts})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of every MLP and expert."""
        return 4 * self.hidden_size

    def uses_moe(self, block: int) -> bool:
        return block >= self.depth - self.num_moe_layers

    def has_skip(self, block: int) -> bool:
        return block > self.depth // 2

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DiT21Config:
        """The config from the ``model.params`` mapping of the release's ``config.yaml``.

        Raises ValueError naming any option this model cannot honour or does not know.
        """
        ours = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - ours - set(_FIXED_OPTIONS) - _IGNORED_OPTIONS)
        if unknown:
            raise ValueError(f"unknown Hunyuan3D-2.1 DiT option(s): {', '.join(unknown)}; is this a 2.1 config.yaml?")
        unsupported = [f"{key}={params[key]!r} (supported: {value!r})"
                       for key, value in _FIXED_OPTIONS.items() if key in params and params[key] != value]
        if unsupported:
            raise ValueError("Hunyuan3D-2.1 DiT option(s) not supported: " + ", ".join(unsupported))
        return cls(**{key: value for key, value in params.items() if key in ours})
