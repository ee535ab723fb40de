"""Reference-only attention: every self-attention of the UNet also attends to a reference image.

The reference (the condition image's latent, noised to the current step) first goes through the
UNet in ``write`` mode: each self-attention layer records the hidden states it receives. The
real sample then goes through in ``read`` mode: each self-attention layer takes its keys and
values from its own hidden states followed by the recorded ones, its queries from its own alone.
Cross-attention layers are left as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

WRITE, READ = "write", "read"


class ReferenceBank:
    """The hidden states recorded in ``write`` mode, by layer name, and the current mode."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.states: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.mode = None
        self.states.clear()


class ReferenceAttentionProcessor:
    """Wraps diffusers' scaled-dot-product processor for one self-attention layer."""

    def __init__(self, name: str, bank: ReferenceBank):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name = name
        self.bank = bank
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        if self.bank.mode == WRITE:
            self.bank.states[self.name] = hidden_states
        elif self.bank.mode == READ:
            own = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            encoder_hidden_states = torch.cat([own, self.bank.states[self.name]], dim=1)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_reference_attention(unet: nn.Module, bank: ReferenceBank) -> int:
    """Give every ``attn1`` (self-attention) of ``unet`` a reference processor; the rest get plain SDPA.

    Returns the number of reference layers. Setting processors moves no weights, so this is safe
    on a component the memory manager streams.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors: dict[str, Any] = {}
    for name in unet.attn_processors:
        is_self_attention = name.endswith("attn1.processor")
        processors[name] = ReferenceAttentionProcessor(name, bank) if is_self_attention else AttnProcessor2_0()
    count = sum(isinstance(p, ReferenceAttentionProcessor) for p in processors.values())
    unet.set_attn_processor(processors)  # empties the dict it is given
    return count
