"""Declaring the delighting and paint models' parts to the memory manager, loaded from the released folders.

The delighting folder is a diffusers InstructPix2Pix folder: its UNet, VAE and CLIP text encoder
are diffusers and transformers classes, loaded like Hunyuan3D-1's parts (``register_components``).
A paint folder's VAE is a diffusers ``AutoencoderKL``; its UNet is our ``MultiviewUNet``, filled
strictly from ``unet/diffusion_pytorch_model.safetensors`` when the folder has one, else from the
released ``unet/diffusion_pytorch_model.bin`` (a ``torch.save`` state dict, memory-mapped and
unpickled with ``weights_only``). The paint folders' text encoder is never run and not declared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...pipelines.hunyuan3d_v1.components import ComponentSpec, block_list, unet_blocks, weight_files

if TYPE_CHECKING:
    from torch import nn

# What Hunyuan3D-2 Paint computes in on an accelerator (upstream runs both models in float16);
# the memory manager resolves it per device (float32 on the CPU).
PRECISION = "float16"
UNET, VAE, TEXT_ENCODER = "unet", "vae", "text_encoder"
_DIFFUSERS_STEM = "diffusion_pytorch_model"
DELIGHT_PARTS = (
    ComponentSpec(UNET, UNET, "UNet2DConditionModel", "diffusers", unet_blocks),
    ComponentSpec(VAE, VAE, "AutoencoderKL", "diffusers"),
    ComponentSpec(TEXT_ENCODER, TEXT_ENCODER, "CLIPTextModel", "transformers", block_list),
)
_PAINT_VAE = ComponentSpec(VAE, VAE, "AutoencoderKL", "diffusers")


def register_paint_parts(memory: Any, delight_root: Path, paint_root: Path, *, turbo: bool) -> dict[str, list[str]]:
    """Declare the delighting model's UNet, VAE and text encoder and the paint model's UNet and VAE.

    Args:
        memory: the job's memory manager.
        delight_root: the ``hunyuan3d-delight-v2-0`` folder.
        paint_root: the ``hunyuan3d-paint-v2-0`` folder, or ``-turbo``'s when ``turbo``.
        turbo: whether ``paint_root`` is the turbo paint model.

    Returns the component names, ``{"delight": [...], "paint": [...]}``, for ``delight`` and
    ``paint_views``. Nothing loads until a stage runs.
    """
    from ...errors import BackendError
    from ...protocol import ErrorCode

    if turbo != paint_root.name.endswith("-turbo"):
        raise BackendError(ErrorCode.BAD_PARAMETER, f"{paint_root} is not the {'turbo ' if turbo else ''}paint model",
                           hint="use hunyuan3d-paint-v2-0-turbo for turbo paint and hunyuan3d-paint-v2-0 otherwise")
    names: dict[str, list[str]] = {"delight": [], "paint": []}
    for model, root, specs in (("delight", delight_root, DELIGHT_PARTS), ("paint", paint_root, (_PAINT_VAE,))):
        for spec in specs:
            names[model].append(f"{root.name}.{spec.name}")
            memory.register(names[model][-1], lambda spec=spec, root=root: _from(root, lambda: spec.load(root)),
                            precision=PRECISION, files=spec.files(root), blocks=spec.blocks)
    unet_name = f"{paint_root.name}.{UNET}"
    memory.register(unet_name, lambda: _from(paint_root, lambda: load_paint_unet(paint_root / UNET)), precision=PRECISION,
                    files=weight_files(paint_root / UNET, _DIFFUSERS_STEM), blocks=lambda module: module.blocks())
    names["paint"].insert(0, unet_name)
    return names


def _from(root: Path, load: Callable[[], nn.Module]) -> nn.Module:
    """The loaded module, told the model folder it came from (its sampler config and tokenizer live there)."""
    module = load()
    module.release_folder = root
    return module


def load_paint_unet(folder: Path) -> nn.Module:
    """The paint folder's ``unet/`` as a MultiviewUNet, on the CPU in the dtype of its file, keys checked strictly."""
    from ...memory.loading import WeightsError, load_safetensors_module, load_torch_module
    from .unet import MultiviewUNet, read_unet_config

    config = read_unet_config(folder)
    files = weight_files(folder, _DIFFUSERS_STEM)

    def build() -> MultiviewUNet:
        try:
            return MultiviewUNet(config)
        except (TypeError, ValueError) as exc:
            raise WeightsError(folder / "config.json", f"does not describe a paint UNet ({exc})",
                               hint="download the paint folder again") from None

    if files[0].suffix == ".bin":
        return load_torch_module(build, files[0])
    return load_safetensors_module(build, files)


def part_names(names: list[str]) -> dict[str, str]:
    """Component names by part (``unet``, ``vae``, ``text_encoder``): the last dotted piece of each name."""
    return {name.rsplit(".", 1)[-1]: name for name in names}
