"""The standard multiview model (``mvd_std/``): an SDXL-style UNet conditioned on two CLIP image encoders.

Conditioning: the two image embeddings, concatenated, are added to the precomputed embedding of
an empty prompt (``uc_text_emb.pt``), weighted per token position by ``ramping_coefficients``;
the pooled embedding is ``uc_text_emb_2.pt``; the size conditioning is the grid's size. The
unconditional branch is all zeros. Guidance is constant: ``u + scale * (c - u)``, 2.0 upstream.
The VAE sees the condition image at 512 in [-1, 1]; the grid is 1024x1536 (views of 512), with
azimuths laid out [[0, 300], [60, 240], [120, 180]].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ....errors import BackendError
from ....protocol import ErrorCode
from ..components import ComponentSpec, ImageNormalizer, block_list, unet_blocks
from .model import GRID_COLS, GRID_ROWS, Conditioning, MultiviewModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ...base import JobContext

TEXT_EMBEDDING_FILE = "uc_text_emb.pt"
POOLED_EMBEDDING_FILE = "uc_text_emb_2.pt"


class StdMultiview(MultiviewModel):
    parts = (
        ComponentSpec("unet", "unet", "UNet2DConditionModel", "diffusers", unet_blocks),
        ComponentSpec("vae", "vae", "AutoencoderKL", "diffusers"),
        ComponentSpec("vision_encoder", "vision_encoder", "CLIPVisionModelWithProjection", "transformers", block_list),
        ComponentSpec("vision_encoder_2", "vision_encoder_2", "CLIPVisionModelWithProjection", "transformers", block_list),
    )
    default_view_size = 512
    view_order = (0, 2, 4, 5, 3, 1)
    reference_preprocessor = "feature_extractor_vae"
    initial_noise_first = True

    def __init__(self, root, names):
        super().__init__(root, names)
        self.clip_normalizer = ImageNormalizer.from_folder(root / "vision_processor")
        self.text_embedding = self._load_embedding(TEXT_EMBEDDING_FILE, dims=3)
        self.pooled_embedding = self._load_embedding(POOLED_EMBEDDING_FILE, dims=2)

    def _load_embedding(self, name: str, dims: int) -> torch.Tensor:
        import torch

        path = self.root / name
        try:
            tensor = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file fails in the unpickler in many ways; each means "download again"
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{path} is not a readable tensor file ({exc})",
                               hint="download the folder again") from None
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != dims:
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{path} does not hold a {dims}-d tensor", hint="download the folder again")
        return tensor.float()

    def condition(self, modules: dict[str, Any], ctx: JobContext, image: Image.Image, generator: torch.Generator,
                  view_size: int) -> Conditioning:
        import torch

        device = ctx.memory.device
        unet_config = self._config("unet")
        reference = self.encode_reference(modules["vae"], self.reference_normalizer(image), generator, self.dtype(ctx, "vae"), device)
        clip_pixels = self.clip_normalizer(image)
        embeddings = [modules[part](clip_pixels.to(device, self.dtype(ctx, part))).image_embeds.float()
                      for part in ("vision_encoder", "vision_encoder_2")]
        image_embedding = torch.cat(embeddings, dim=-1)[:, None, :]
        text = self.text_embedding.to(device)
        pooled = self.pooled_embedding.to(device)
        ramp = torch.tensor(self.ramp, device=device)[:, None]
        time_ids = self.size_conditioning((GRID_ROWS * view_size, GRID_COLS * view_size)).to(device)
        expected_added = unet_config.get("addition_time_embed_dim", 0) * time_ids.shape[-1] + pooled.shape[-1]
        if (ramp.shape[0] != text.shape[1] or image_embedding.shape[-1] != text.shape[-1]
                or unet_config.get("projection_class_embeddings_input_dim") != expected_added):
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT,
                               f"the embeddings of {self.root} do not fit its UNet: ramp {tuple(ramp.shape)}, "
                               f"text {tuple(text.shape)}, image {tuple(image_embedding.shape)}, pooled {tuple(pooled.shape)}",
                               hint="check that the folder is an unmodified mvd_std download")
        conditional = text + image_embedding * ramp
        return Conditioning(
            reference,
            torch.cat([torch.zeros_like(conditional), conditional]),
            {"text_embeds": torch.cat([torch.zeros_like(pooled), pooled]), "time_ids": torch.cat([time_ids, time_ids])},
        )

    @staticmethod
    def size_conditioning(grid_size: tuple[int, int]) -> torch.Tensor:
        """SDXL's (original size, crop top-left, target size) for a grid of (height, width)."""
        import torch

        height, width = grid_size
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    def guide(self, unconditional: torch.Tensor, conditional: torch.Tensor, timestep: float, scale: float) -> torch.Tensor:
        return unconditional + scale * (conditional - unconditional)
