"""The lite multiview model (``mvd_lite/``): an SD-style UNet conditioned on text and one CLIP image encoder.

Conditioning: the unconditional branch is the text encoder's embedding of the empty prompt; the
conditional branch adds the CLIP image embedding to every token position, weighted per position
by the folder's ``ramping_coefficients``. Guidance differs per view and fades with the noise
level: ``u + scale * G(view) * a(t) * (c - u)`` with ``a(t) = (2 + 16 (t/1000)^5) / 3``.
The VAE sees the condition image at the size of ``feature_extractor_vae`` (640, normalised
around 0.5 with a spread of 0.8); the grid is 640x960 (views of 320) with cells in azimuth
order row by row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..components import ComponentSpec, ImageNormalizer, block_list, unet_blocks
from .model import GRID_COLS, GRID_ROWS, Conditioning, MultiviewModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ...base import JobContext

# Guidance per grid cell (row, column): azimuths [[0, 60], [120, 180], [240, 300]].
VIEW_GUIDANCE = ((3.0, 2.5), (2.0, 1.5), (2.0, 2.5))
MAX_TEXT_TOKENS = 77


def guidance_ramp(timestep: float) -> float:
    """How strongly the per-view guidance applies at ``timestep`` (about 6 at the start, 2/3 at the end)."""
    return (2 + 16 * (timestep / 1000) ** 5) / 3


class LiteMultiview(MultiviewModel):
    parts = (
        ComponentSpec("unet", "unet", "UNet2DConditionModel", "diffusers", unet_blocks),
        ComponentSpec("vae", "vae", "AutoencoderKL", "diffusers"),
        ComponentSpec("text_encoder", "text_encoder", "CLIPTextModel", "transformers", block_list),
        ComponentSpec("vision_encoder", "vision_encoder", "CLIPVisionModelWithProjection", "transformers", block_list),
    )
    default_view_size = 320
    view_order = (0, 1, 2, 3, 4, 5)
    reference_preprocessor = "feature_extractor_vae"
    initial_noise_first = False

    def __init__(self, root, names):
        super().__init__(root, names)
        self.clip_normalizer = ImageNormalizer.from_folder(root / "feature_extractor_clip")

    def _empty_prompt_tokens(self) -> torch.Tensor:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.root / "tokenizer"), local_files_only=True)
        return tokenizer([""], padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt").input_ids

    def condition(self, modules: dict[str, Any], ctx: JobContext, image: Image.Image, generator: torch.Generator,
                  view_size: int) -> Conditioning:
        import torch

        device = ctx.memory.device
        reference = self.encode_reference(modules["vae"], self.reference_normalizer(image), generator, self.dtype(ctx, "vae"), device)
        clip_pixels = self.clip_normalizer(image).to(device, self.dtype(ctx, "vision_encoder"))
        image_embedding = modules["vision_encoder"](clip_pixels).image_embeds.float()[:, None, :]
        text = modules["text_encoder"](self._empty_prompt_tokens().to(device))[0].float()
        ramp = torch.tensor(self.ramp, device=device)[:, None]
        if ramp.shape[0] != text.shape[1] or image_embedding.shape[-1] != text.shape[-1]:
            raise ValueError(f"ramping coefficients {tuple(ramp.shape)}, text {tuple(text.shape)} and image embedding "
                             f"{tuple(image_embedding.shape)} of {self.root} do not fit together")
        return Conditioning(reference, torch.cat([text, text + image_embedding * ramp]))

    def guide(self, unconditional: torch.Tensor, conditional: torch.Tensor, timestep: float, scale: float) -> torch.Tensor:
        import torch

        rows, cols = unconditional.shape[-2:]
        cell_rows, cell_cols = rows // GRID_ROWS, cols // GRID_COLS
        per_cell = torch.tensor(VIEW_GUIDANCE, device=unconditional.device)
        weights = per_cell.repeat_interleave(cell_rows, 0).repeat_interleave(cell_cols, 1)
        return unconditional + scale * guidance_ramp(timestep) * weights * (conditional - unconditional)
