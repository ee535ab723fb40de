"""Running the delighting and multiview paint models: picture preparation, samplers, decoding.

The samplers are diffusers' schedulers (Euler ancestral; LCM for turbo paint) configured from the
folder's ``scheduler/scheduler_config.json`` as upstream configures them; the loops, the guidance
and the picture handling are ours. Each stage runs through the memory manager (``ctx.run_stage``) and
reports one progress event per denoising step, so a cancel takes effect between steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BackendError
from ...protocol import ErrorCode
from .loading import TEXT_ENCODER, UNET, VAE, part_names

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ...pipelines.base import JobContext
    from ..views import OrthoView

DELIGHT_SIZE = 512
PAINT_SIZE = 512
TURBO_STEPS = 10
TURBO_GRID_STEPS = 30
# The grey upstream puts behind a transparent reference picture.
_REFERENCE_BACKGROUND = (127, 127, 127)
# Upstream's colour correction pulls the delit picture's channel statistics toward the input's.
_RECOLOUR_PULL = 0.95


def load_scheduler(root: Path, model: str) -> Any:
    """The sampler upstream swaps in for the folder's saved one, configured from its ``scheduler/scheduler_config.json``.

    ``model``: ``delight`` (Euler ancestral as configured), ``paint`` (Euler ancestral on
    ``trailing`` timesteps) or ``turbo`` (LCM).
    """
    from diffusers import EulerAncestralDiscreteScheduler, LCMScheduler

    from ...memory.loading import WeightsError

    path = root / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(path, f"is not readable ({exc})", hint="download the model folder again") from None
    if model == "turbo":
        return LCMScheduler.from_config(config)
    if model == "paint":
        return EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    return EulerAncestralDiscreteScheduler.from_config(config)


def _pixels(image: Image.Image, *, layout: str) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] of an RGB picture, laid out in memory as upstream hands it to the VAE.

    On the CPU a convolution sums in an order that depends on the input's strides, so float32
    parity with upstream holds only for the same layout: ``diffusers`` (its image processor,
    channels-last with a full batch stride; the delighting pipeline) or ``permuted`` (an HWC
    array permuted, then given a batch dimension; upstream's paint pipeline).
    """
    import numpy as np
    import torch

    values = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if layout == "diffusers":
        return torch.from_numpy(values[None]).permute(0, 3, 1, 2)
    return torch.from_numpy(values).permute(2, 0, 1)[None]


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float32 pictures in [0, 1] from (B, C, h, w) latents."""
    import torch

    with torch.inference_mode():
        decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (decoded.float() / 2 + 0.5).clamp(0, 1)


def _to_pictures(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> pictures, rounded to 8 bits as diffusers does."""
    from PIL import Image

    return [Image.fromarray((image * 255).round().astype("uint8")) for image in images.permute(0, 2, 3, 1).cpu().numpy()]


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise drawn by ``generator`` on its own device, then moved (as diffusers' ``randn_tensor``)."""
    import torch

    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


# -- delighting ------------------------------------------------------------------------------------

def _prepare_delight_input(picture: Image.Image) -> tuple[Image.Image, torch.Tensor, torch.Tensor]:
    """Upstream's input handling: 512^2, the alpha eroded by one pixel, transparent pixels white.

    Returns the RGB picture the model sees, the alpha (H, W, 1) and the RGB target of the colour
    correction (H, W, 3), both float64 in [0, 1].
    """
    import numpy as np
    import torch
    from PIL import Image

    picture = picture.resize((DELIGHT_SIZE, DELIGHT_SIZE), Image.Resampling.BICUBIC)
    if picture.mode == "RGBA":
        array = np.array(picture)
        alpha = torch.from_numpy(array[:, :, 3].astype(np.float32))[None, None]
        # A 3x3 minimum (max-pooling pads with -inf, so pixels outside the picture never count).
        eroded = (-torch.nn.functional.max_pool2d(-alpha, 3, stride=1, padding=1))[0, 0].numpy().astype(np.uint8)
        array[eroded == 0, :3] = 255
        array[:, :, 3] = eroded
        values = torch.from_numpy(array / 255.0)
        return Image.fromarray(array[:, :, :3]), values[:, :, 3:], values[:, :, :3]
    rgb = picture.convert("RGB")
    values = torch.from_numpy(np.array(rgb) / 255.0)
    return rgb, torch.ones_like(values[:, :, :1]), values


def _recolour(delit: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Upstream's colour correction: match each channel's mean and spread over the opaque pixels, kept only if it moves closer to the input."""
    import torch

    opaque = alpha[:, :, 0] > 0.5
    corrected = torch.zeros_like(delit)
    for channel in range(3):
        source, wanted = delit[:, :, channel][opaque], target[:, :, channel][opaque]
        corrected[:, :, channel] = torch.clamp(
            (delit[:, :, channel] - _RECOLOUR_PULL * source.mean()) * (wanted.std() / source.std()) + _RECOLOUR_PULL * wanted.mean(), 0, 1)
    before, after = torch.mean((delit - target) ** 2), torch.mean((corrected - target) ** 2)
    return delit if before < after else corrected


def sample_delight(unet: torch.nn.Module, scheduler: Any, text: torch.Tensor, image_latents: torch.Tensor, *, seed: int, steps: int,
                   guidance: float, image_guidance: float, on_step: Callable[[int, torch.Tensor], None]) -> torch.Tensor:
    """The delighting sampler: latents of the delit picture from the encoded prompt and picture (InstructPix2Pix guidance).

    ``text`` and ``image_latents`` hold three rows (prompt and picture, picture only, neither)
    when guided (``guidance`` > 1 and ``image_guidance`` >= 1), else one. The noise comes from a
    CPU generator seeded with ``seed``, as upstream draws it on every device.
    ``on_step(done, latents)`` hears each step.
    """
    import torch

    guided = image_latents.shape[0] == 3
    device, dtype = image_latents.device, image_latents.dtype
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = _randn((1, unet.config.out_channels, *image_latents.shape[2:]), generator, device, dtype) * scheduler.init_noise_sigma
    for step, t in enumerate(scheduler.timesteps):
        with torch.inference_mode():
            model_input = scheduler.scale_model_input(torch.cat([latents] * 3) if guided else latents, t)
            noise = unet(torch.cat([model_input, image_latents], dim=1), t, encoder_hidden_states=text, return_dict=False)[0]
            if guided:
                with_prompt, picture_only, neither = noise.chunk(3)
                noise = neither + guidance * (with_prompt - picture_only) + image_guidance * (picture_only - neither)
            latents = scheduler.step(noise, t, latents, generator=generator, return_dict=False)[0]
        on_step(step + 1, latents)
    return latents


def encode_delight_inputs(text_encoder: torch.nn.Module, vae: torch.nn.Module, token_ids: torch.Tensor, attention_mask: torch.Tensor,
                          pixels: torch.Tensor, *, guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The delighting model's conditions: prompt embeddings and the picture's latents (the posterior's mode, unscaled).

    ``pixels`` is (1, 3, H, W) in [0, 1]. Guided, both come as three rows: prompt and picture,
    picture only, neither (the empty prompt stands for "no prompt", as in diffusers).
    """
    import torch

    with torch.inference_mode():
        use_mask = getattr(text_encoder.config, "use_attention_mask", False)
        text = text_encoder(token_ids, attention_mask=attention_mask if use_mask else None)[0]
        image_latents = vae.encode(pixels * 2 - 1).latent_dist.mode()
    if guided:
        text = torch.cat([text, text, text])
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
    return text, image_latents


def delight(ctx: JobContext, names: list[str], picture: Image.Image, *, seed: int, steps: int, guidance: float,
            image_guidance: float) -> Image.Image:
    """Remove the lighting and shading from the picture (upstream's ``Light_Shadow_Remover``).

    Args:
        ctx: the job (memory manager, progress under stage ``delight``, cancellation).
        names: ``register_paint_parts(...)["delight"]``.
        picture: the prepared picture (RGB, or RGBA with the object's alpha).
        seed: seeds the sampler's noise (upstream: 42).
        steps: denoising steps (upstream: 50).
        guidance: prompt guidance; upstream's 1.0 turns classifier-free guidance off altogether.
        image_guidance: picture guidance, used only when ``guidance`` > 1 (upstream: 1.5).

    Returns the delit RGB picture, 512^2, transparent pixels white.
    """
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPTokenizer

    if steps < 1:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"delighting needs at least one step, not {steps}", hint="use 50 (upstream)")
    parts = part_names(names)
    memory = ctx.memory
    model_input, alpha, target = _prepare_delight_input(picture)
    if not bool((alpha > 0.5).any()):
        raise BackendError(ErrorCode.BAD_INPUT, "the picture is fully transparent: there is nothing to delight",
                           hint="send a picture of the object with its alpha channel, or an opaque RGB picture")
    guided = guidance > 1.0 and image_guidance >= 1.0
    ctx.progress("delight", 0, steps, "removing the lighting from the picture")

    def encode(modules: dict[str, torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = CLIPTokenizer.from_pretrained(str(modules[TEXT_ENCODER].release_folder / "tokenizer"))
        # Upstream's prompt is empty: the model was trained to delight with no instruction.
        tokens = tokenizer([""], padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt")
        pixels = _pixels(model_input, layout="diffusers").to(memory.device, memory.compute_dtype(parts[VAE]))
        return encode_delight_inputs(modules[TEXT_ENCODER], modules[VAE], tokens.input_ids.to(memory.device),
                                     tokens.attention_mask.to(memory.device), pixels, guided=guided)

    text, image_latents = ctx.run_stage("delight", {TEXT_ENCODER: parts[TEXT_ENCODER], VAE: parts[VAE]}, encode)

    def denoise(modules: dict[str, torch.nn.Module]) -> torch.Tensor:
        dtype = memory.compute_dtype(parts[UNET])
        return sample_delight(modules[UNET], load_scheduler(modules[UNET].release_folder, "delight"), text.to(dtype), image_latents.to(dtype), seed=seed, steps=steps,
                              guidance=guidance, image_guidance=image_guidance,
                              on_step=lambda step, _latents: ctx.progress("delight", step, steps))

    latents = ctx.run_stage("delight", {UNET: parts[UNET]}, denoise)

    def decode(modules: dict[str, torch.nn.Module]) -> Image.Image:
        return _to_pictures(decode_latents(modules[VAE], latents.to(memory.compute_dtype(parts[VAE]))))[0]

    delit = torch.from_numpy(np.array(ctx.run_stage("delight", {VAE: parts[VAE]}, decode)) / 255.0)
    recoloured = _recolour(delit, target, alpha)
    composed = recoloured * alpha + (1.0 - alpha)
    return Image.fromarray((composed.numpy() * 255).astype(np.uint8))


# -- multiview paint -------------------------------------------------------------------------------

def _condition_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: each condition picture at the paint size, transparent parts white (as upstream)."""
    import numpy as np
    import torch
    from PIL import Image

    tensors = []
    for image in images:
        image = image.resize((PAINT_SIZE, PAINT_SIZE), Image.Resampling.BICUBIC)
        if image.mode == "L":
            image = image.point(lambda value: 255 if value > 1 else 0, mode="1")
        values = np.asarray(image.convert("RGBA") if image.mode in ("LA", "PA", "P") else image, dtype=np.float32) / 255.0
        if values.ndim == 2:
            values = np.repeat(values[:, :, None], 3, axis=2)
        if values.shape[2] > 3:
            values = values[:, :, :3] * values[:, :, 3:] + (1.0 - values[:, :, 3:])
        tensors.append(torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1))
    return torch.stack(tensors)


def _reference_pixels(reference: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: the reference at the paint size, on upstream's grey where it is transparent."""
    from PIL import Image

    reference = reference.resize((PAINT_SIZE, PAINT_SIZE), Image.Resampling.BICUBIC)
    if reference.mode == "RGBA":
        backdrop = Image.new("RGB", reference.size, _REFERENCE_BACKGROUND)
        backdrop.paste(reference, mask=reference.getchannel("A"))
        reference = backdrop
    elif reference.mode != "RGB":
        raise BackendError(ErrorCode.BAD_INPUT, f"the reference picture is {reference.mode}, not RGB or RGBA",
                           hint="convert it to RGB (or RGBA with the object's alpha)")
    return _pixels(reference, layout="permuted")


def encode_views(vae: torch.nn.Module, reference: torch.Tensor, normals: torch.Tensor, positions: torch.Tensor, *,
                 seed: int) -> list[torch.Tensor]:
    """Latents (1, N, C, h, w) of the (N, 3, H, W) pictures in [0, 1], each drawn from the VAE's posterior, as upstream does.

    The draws come in upstream's order (reference, normals, positions) from one generator on the
    VAE's device seeded with ``seed``.
    """
    import torch

    generator = torch.Generator(reference.device).manual_seed(seed)
    latents = []
    with torch.inference_mode():
        for pixels in (reference, normals, positions):
            posterior = vae.encode((pixels - 0.5) * 2).latent_dist
            latents.append(posterior.sample(generator=generator)[None] * vae.config.scaling_factor)
    return latents


def turbo_timesteps(scheduler: Any, steps: int) -> list[int]:
    """The turbo model's timesteps: every ``30 // steps``-th of 30 evenly spaced training timesteps, from the noisiest.

    Upstream takes 10 of them (every third); the model was distilled on this 30-step grid.
    """
    if not 1 <= steps <= TURBO_GRID_STEPS:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"turbo paint takes 1 to {TURBO_GRID_STEPS} steps, not {steps}",
                           hint=f"use {TURBO_STEPS} (upstream)")
    spacing = scheduler.config.num_train_timesteps // TURBO_GRID_STEPS
    grid = [spacing * (index + 1) - 1 for index in range(TURBO_GRID_STEPS)]
    stride = TURBO_GRID_STEPS // steps
    return [grid[index] for index in range(TURBO_GRID_STEPS - 1, -1, -stride)][:steps]


def sample_views(unet: torch.nn.Module, scheduler: Any, reference_latents: torch.Tensor, normals: torch.Tensor, positions: torch.Tensor,
                 cameras: torch.Tensor, *, seed: int, steps: int, guidance: float, on_step: Callable[[int, torch.Tensor], None],
                 masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The paint sampler: latents (N, C, h, w) of N views from the reference's and the condition images' latents.

    Args:
        unet: a MultiviewUNet.
        scheduler: Euler ancestral (``timestep_spacing="trailing"``), or LCM for the turbo model.
        reference_latents: (1, 1, C, h, w); normals, positions: (1, N, C, h, w).
        cameras: (1, N) camera indices of the views.
        guidance: > 1 adds a pass without the reference (and with a zero prompt) and extrapolates
            away from it, as upstream does.
        on_step: ``on_step(done, latents)`` hears each step.
        masks: the turbo model's multiview attention masks (``multiview_masks``); turbo runs
            the timesteps of ``turbo_timesteps``.
    """
    import torch

    device, dtype = normals.device, normals.dtype
    count = normals.shape[1]
    turbo = masks is not None
    if turbo:
        scheduler.set_timesteps(timesteps=turbo_timesteps(scheduler, steps), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    guided = guidance > 1.0
    with torch.inference_mode():
        recorded = unet.record_reference(reference_latents, torch.zeros_like(cameras[:, :1]))
        prompt = unet.unet.learned_text_clip_gen
        if guided:  # rows: without the reference (and no prompt), with it
            prompt = torch.cat([torch.zeros_like(prompt), prompt])
            normals, positions, cameras = torch.cat([normals, normals]), torch.cat([positions, positions]), torch.cat([cameras, cameras])
            masks = {length: torch.cat([mask, mask]) for length, mask in masks.items()} if masks else masks
        reference_rows = slice(1, 2) if guided else slice(0, 1)
    latents = _randn((count, unet.latent_channels, *normals.shape[-2:]), generator, device, dtype) * scheduler.init_noise_sigma
    for step, t in enumerate(scheduler.timesteps):
        with torch.inference_mode():
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            noise = unet(model_input.unflatten(0, (-1, count)), t, prompt, normals, positions, cameras, recorded, reference_rows,
                         masks)
            if guided:
                plain, referenced = noise.chunk(2)
                noise = plain + guidance * (referenced - plain)
            latents = scheduler.step(noise, t, latents, generator=generator, return_dict=False)[0]
        on_step(step + 1, latents)
    return latents


def paint_views(ctx: JobContext, names: list[str], reference: Image.Image, normal_images: list[Image.Image],
                position_images: list[Image.Image], *, seed: int, steps: int, guidance: float, turbo: bool,
                views: Sequence[OrthoView] | None = None) -> list[Image.Image]:
    """Paint the mesh's views from the reference picture (upstream's ``Multiview_Diffusion_Net``).

    Args:
        ctx: the job (memory manager, progress under stage ``paint``, cancellation).
        names: ``register_paint_parts(...)["paint"]``.
        reference: the delit picture.
        normal_images, position_images: one per view, in the order of ``views``.
        seed: seeds the latents' noise and the sampler (upstream: 0).
        steps: denoising steps (upstream: 30).
        guidance: classifier-free guidance on the reference (upstream: 2.0; <= 1 turns it off).
            The turbo model is guidance-distilled and ignores it, as upstream.
        turbo: whether ``names`` are the turbo paint model's: LCM sampling on its distilled
            timesteps (``turbo_timesteps``; upstream: 10 steps) and multiview attention limited to
            nearby surface points (``multiview_masks``).
        views: the cameras of the images; the official six views when None.

    Returns one RGB picture per view, ``PAINT_SIZE`` square.
    """
    import torch

    from ..views import official_views
    from .unet import camera_index, multiview_masks

    views = list(official_views() if views is None else views)
    if not (len(normal_images) == len(position_images) == len(views)):
        raise BackendError(ErrorCode.BAD_INPUT, f"paint needs one normal and one position image per view: got {len(normal_images)} "
                           f"normal and {len(position_images)} position images for {len(views)} views",
                           hint="render both maps for every view (backend.texture.views)")
    if steps < 1:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"paint needs at least one step, not {steps}", hint="use 30 (upstream)")
    try:
        cameras = torch.tensor([[camera_index(view.azimuth, view.elevation) for view in views]])
    except ValueError as exc:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"a view the paint model cannot paint: {exc}",
                           hint="use the official views (backend.texture.views.official_views)") from None
    parts = part_names(names)
    memory = ctx.memory
    model = parts[UNET].rsplit(".", 1)[0]
    if turbo != model.endswith("-turbo"):
        raise BackendError(ErrorCode.BAD_PARAMETER, f"turbo={turbo} does not fit the paint model {model}",
                           hint="pass turbo=True exactly for the hunyuan3d-paint-v2-0-turbo folder")
    reference_pixels = _reference_pixels(reference)
    normal_pixels, position_pixels = _condition_pixels(normal_images), _condition_pixels(position_images)
    ctx.progress("paint", 0, steps, f"painting {len(views)} views")

    def encode(modules: dict[str, torch.nn.Module]) -> list[torch.Tensor]:
        pixels = [p.to(memory.device, memory.compute_dtype(parts[VAE])) for p in (reference_pixels, normal_pixels, position_pixels)]
        return encode_views(modules[VAE], *pixels, seed=seed)

    reference_latents, normals, positions = ctx.run_stage("paint", {VAE: parts[VAE]}, encode)

    masks = multiview_masks(position_pixels[None]) if turbo else None

    def denoise(modules: dict[str, torch.nn.Module]) -> torch.Tensor:
        dtype = memory.compute_dtype(parts[UNET])
        scheduler = load_scheduler(modules[UNET].release_folder, "turbo" if turbo else "paint")
        on_device = {length: mask.to(memory.device) for length, mask in masks.items()} if masks else None
        return sample_views(modules[UNET], scheduler, reference_latents.to(dtype), normals.to(dtype), positions.to(dtype),
                            cameras.to(memory.device), seed=seed, steps=steps, guidance=1.0 if turbo else guidance,
                            on_step=lambda step, _latents: ctx.progress("paint", step, steps), masks=on_device)

    latents = ctx.run_stage("paint", {UNET: parts[UNET]}, denoise)

    def decode(modules: dict[str, torch.nn.Module]) -> list[Image.Image]:
        return _to_pictures(decode_latents(modules[VAE], latents.to(memory.compute_dtype(parts[VAE]))))

    return ctx.run_stage("paint", {VAE: parts[VAE]}, decode)
