"""What the lite and std multiview models share: the denoising loop, decoding and the output grid.

Both draw six views of the object at azimuths 0, 60, ..., 300 (elevation 0) as one picture, a
grid of 3 rows x 2 columns, starting from pure noise. At every step the UNet runs twice: once
over the condition image's latent noised to the current level (``write``: the self-attention
layers record what they see) and once over the grid (``read``: they attend to it as well).
Classifier-free guidance pairs an unconditional branch (a neutral grey reference latent) with
the conditional one.

All noise comes from one CPU generator seeded with the job's seed, drawn in upstream's order,
so a seed gives the same views on any device (upstream draws from the global CUDA generator).
Latents stay float32 between steps; the UNet computes in its component's compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ....errors import BackendError
from ....protocol import ErrorCode
from ..background import white_out_background
from ..components import ComponentSpec, ImageNormalizer, load_scheduler
from .reference_attention import READ, WRITE, ReferenceBank, install_reference_attention

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from ...base import JobContext

GRID_ROWS, GRID_COLS = 3, 2
# Latents are stored shifted and scaled: upstream's ``unscale_latents``.
LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75
# Decoded pixels are 0.8 x the VAE output around mid-grey (upstream's ``unscale_image``).
DECODED_SCALE = 0.8
STAGE_CONDITION, STAGE_DENOISE, STAGE_DECODE = "condition", "multiview", "decode"


@dataclass
class Conditioning:
    """What the denoising loop needs besides the noise; batch 2 = (unconditional, conditional)."""

    reference_latents: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MultiviewOutput:
    grid: Image.Image  # 3 rows x 2 columns of views, in the model's own layout
    views: list[Image.Image]  # azimuth 0, 60, ..., 300
    condition: Image.Image  # the condition image as the model saw it (RGB on white)


class MultiviewModel:
    """Base of the lite and std models. Subclasses set the class attributes and ``condition``.

    Args:
        root: the weights folder (``mvd_lite/`` or ``mvd_std/``), laid out as released.
        names: the memory-manager component of each part (``register_components``).
    """

    parts: ClassVar[tuple[ComponentSpec, ...]]
    default_view_size: ClassVar[int]
    view_order: ClassVar[tuple[int, ...]]  # grid cell of each azimuth 0, 60, ..., 300
    reference_preprocessor: ClassVar[str]  # the folder of the VAE-side image normaliser
    initial_noise_first: ClassVar[bool]  # std draws the starting noise before the VAE samples

    def __init__(self, root: Path, names: dict[str, str]):
        import json

        self.root, self.names = root, names
        try:
            self.index = json.loads((root / "model_index.json").read_text())
        except (OSError, ValueError) as exc:
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{root / 'model_index.json'} is not readable ({exc})",
                               hint="download the folder again") from None
        self.ramp = self._ramping_coefficients()
        self.reference_normalizer = ImageNormalizer.from_folder(root / self.reference_preprocessor)

    def _ramping_coefficients(self) -> list[float]:
        ramp = self.index.get("ramping_coefficients")
        if not isinstance(ramp, list) or not ramp or not all(isinstance(x, (int, float)) for x in ramp):
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{self.root / 'model_index.json'} has no list of ramping_coefficients",
                               hint="download the folder again")
        return [float(x) for x in ramp]

    # -- to be provided by the variants ------------------------------------------------------

    def condition(self, modules: dict[str, Any], ctx: JobContext, image: Image.Image, generator: torch.Generator,
                  view_size: int) -> Conditioning:
        """Reference latents and embeddings from the condition image; ``modules`` holds ``condition_parts()``."""
        raise NotImplementedError

    def guide(self, unconditional: torch.Tensor, conditional: torch.Tensor, timestep: float, scale: float) -> torch.Tensor:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def generate(self, ctx: JobContext, image: Image.Image, *, seed: int, steps: int, guidance: float,
                 view_size: int | None = None) -> MultiviewOutput:
        """Six views of the object in ``image`` (RGBA, background removed, centred on a square)."""
        import torch

        view_size = view_size or self.default_view_size
        # Upstream whites out the nearly transparent pixels again here, after framing resampled the edges.
        condition_image = rgb_on_white(white_out_background(image))
        generator = torch.Generator("cpu").manual_seed(seed)
        scheduler = load_scheduler(self.root / "scheduler")
        scheduler.set_timesteps(steps)
        latent_shape = self._latent_shape(view_size)
        noise = None
        if self.initial_noise_first:
            noise = torch.randn(latent_shape, generator=generator)
        conditioning = ctx.run_stage(STAGE_CONDITION, self.components(self.condition_parts()),
                                     lambda modules: self._condition(modules, ctx, condition_image, generator, view_size))
        if noise is None:
            noise = torch.randn(latent_shape, generator=generator)
        latents = noise * scheduler.init_noise_sigma
        ctx.progress(STAGE_DENOISE, 0, steps)
        latents = ctx.run_stage(STAGE_DENOISE, self.components(["unet"]),
                                lambda modules: self._denoise(ctx, modules["unet"], scheduler, latents, conditioning, generator, guidance))
        ctx.progress(STAGE_DECODE, 0, 1)
        grid = ctx.run_stage(STAGE_DECODE, self.components(["vae"]), lambda modules: self._decode(ctx, modules["vae"], latents))
        ctx.progress(STAGE_DECODE, 1, 1)
        return MultiviewOutput(grid=grid, views=split_grid(grid, self.view_order), condition=condition_image)

    def components(self, parts: list[str]) -> dict[str, str]:
        """``{part: component}``, as ``JobContext.run_stage`` takes them."""
        return {part: self.names[part] for part in parts}

    def dtype(self, ctx: JobContext, part: str) -> torch.dtype:
        return ctx.memory.compute_dtype(self.names[part])

    def condition_parts(self) -> list[str]:
        return [spec.subfolder for spec in self.parts if spec.subfolder != "unet"]

    def _condition(self, modules: dict[str, Any], ctx: JobContext, image: Image.Image, generator: torch.Generator,
                   view_size: int) -> Conditioning:
        import torch

        with torch.inference_mode():
            return self.condition(modules, ctx, image, generator, view_size)

    def _latent_shape(self, view_size: int) -> tuple[int, int, int, int]:
        factor = self.vae_scale_factor * self.unet_downsampling
        if view_size % factor:
            raise BackendError(ErrorCode.BAD_PARAMETER, f"view_size {view_size} is not a multiple of {factor}, which this model needs",
                               hint=f"use {self.default_view_size} (the official size) or another multiple of {factor}")
        latent = view_size // self.vae_scale_factor
        return (1, self.latent_channels, GRID_ROWS * latent, GRID_COLS * latent)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self._config("vae")["block_out_channels"]) - 1)

    @property
    def unet_downsampling(self) -> int:
        return 2 ** (len(self._config("unet")["down_block_types"]) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self._config("unet")["in_channels"])

    def _config(self, part: str) -> dict[str, Any]:
        import json

        path = self.root / part / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{path} is not readable ({exc})", hint="download the folder again") from None

    def encode_reference(self, vae: nn.Module, pixels: torch.Tensor, generator: torch.Generator,
                         dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(unconditional, conditional) VAE latents, unscaled as upstream: the grey image's first, then the picture's."""
        import torch

        conditional = _sample_posterior(vae, pixels, generator, dtype, device)
        unconditional = _sample_posterior(vae, torch.zeros_like(pixels), generator, dtype, device)
        return torch.cat([unconditional, conditional])

    def _denoise(self, ctx: JobContext, unet: nn.Module, scheduler: Any, latents: torch.Tensor,
                 conditioning: Conditioning, generator: torch.Generator, guidance: float) -> torch.Tensor:
        import torch

        device, dtype = ctx.memory.device, self.dtype(ctx, "unet")
        bank = ReferenceBank()
        install_reference_attention(unet, bank)
        reference = conditioning.reference_latents.to(device, torch.float32)
        hidden = conditioning.encoder_hidden_states.to(device, dtype)
        added = {key: value.to(device, dtype) for key, value in conditioning.added_cond_kwargs.items()}
        latents = latents.to(device)
        timesteps = scheduler.timesteps
        try:
            with torch.inference_mode():
                for index, timestep in enumerate(timesteps):
                    model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
                    # The reference is noised afresh at every step, to the level of the current sample.
                    reference_noise = torch.randn(reference.shape, generator=generator).to(device)
                    noisy_reference = scheduler.add_noise(reference, reference_noise, timestep.reshape(-1))
                    noisy_reference = scheduler.scale_model_input(noisy_reference, timestep)
                    t = timestep.to(device)
                    bank.mode = WRITE
                    unet(noisy_reference.to(dtype), t, encoder_hidden_states=hidden, added_cond_kwargs=added or None)
                    bank.mode = READ
                    prediction = unet(model_input.to(dtype), t, encoder_hidden_states=hidden, added_cond_kwargs=added or None).sample
                    bank.states.clear()
                    unconditional, conditional = prediction.float().chunk(2)
                    noise_prediction = self.guide(unconditional, conditional, float(timestep), guidance)
                    latents = scheduler.step(noise_prediction, timestep, latents, generator=generator).prev_sample
                    ctx.progress(STAGE_DENOISE, index + 1, len(timesteps))
        finally:
            bank.clear()
        return latents

    def _decode(self, ctx: JobContext, vae: nn.Module, latents: torch.Tensor) -> Image.Image:
        import numpy as np
        from PIL import Image

        pixels = self.decode_pixels(vae, latents, ctx.memory.device, self.dtype(ctx, "vae"))
        array = (pixels.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(array)

    def decode_pixels(self, vae: nn.Module, latents: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The grid the final latents show, (3, H, W) float32 in [0, 1] before rounding to bytes."""
        import torch

        latents = latents / LATENT_SCALE + LATENT_SHIFT
        with torch.inference_mode():
            decoded = vae.decode((latents / vae.config.scaling_factor).to(device, dtype)).sample
        return (decoded.float() * DECODED_SCALE + 0.5).clamp(0, 1)[0]


def _sample_posterior(vae: nn.Module, pixels: torch.Tensor, generator: torch.Generator,
                      dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    import torch

    posterior = vae.encode(pixels.to(device, dtype)).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
    return posterior.mean.float() + posterior.std.float() * noise


def rgb_on_white(image: Image.Image) -> Image.Image:
    """An RGBA picture composited on white (upstream's ``to_rgb_image``)."""
    from PIL import Image

    if image.mode != "RGBA":
        return image.convert("RGB")
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image.convert("RGB"), mask=image.getchannel("A"))
    return canvas


def split_grid(grid: Image.Image, order: tuple[int, ...]) -> list[Image.Image]:
    """The six square cells of a 3 x 2 grid, in azimuth order 0, 60, ..., 300 given each azimuth's cell."""
    width, height = grid.size
    cell = width // GRID_COLS
    cells = [grid.crop((col * cell, row * cell, (col + 1) * cell, (row + 1) * cell))
             for row in range(GRID_ROWS) for col in range(GRID_COLS)]
    if cell * GRID_ROWS != height:
        raise ValueError(f"a {width}x{height} picture is not a grid of 3 x 2 square views")
    return [cells[index] for index in order]
