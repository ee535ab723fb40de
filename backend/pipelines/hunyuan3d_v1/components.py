"""Loading the parts of diffusers-layout folders (``mvd_lite/``, ``mvd_std/``, HunyuanDiT) as managed components.

diffusers models (UNets, VAEs, the DiT) are built from their ``config.json`` with parameters on
``meta`` and filled zero-copy from their safetensors files, strictly. transformers models
(CLIP, BERT, T5) go through transformers' own loader, which knows the key layouts of older
releases; a weight it can't find is an error, never a silent random initialisation. Every part
comes back on the CPU in the dtype of its file: the memory manager decides where it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...memory.loading import (
    WeightsError,
    load_safetensors_module,
    load_torch_module,
    parameters_on_meta,
    read_safetensors_header,
    stored_size_and_dtype,
)
from . import PRECISION

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

_DIFFUSERS_STEM = "diffusion_pytorch_model"
_TRANSFORMERS_STEM = "model"
# Attention weights of VAEs saved by diffusers before 0.14 (renamed by diffusers' own loader too).
_LEGACY_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
# Names of the module lists that hold a transformer's repeated blocks.
_BLOCK_LIST_NAMES = ("layers", "layer", "block", "blocks", "transformer_blocks")


def weight_files(folder: Path, stem: str) -> list[Path]:
    """The safetensors file of a model folder, or its shards in order, else its ``torch.save`` file (``.bin``)."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WeightsError(index, f"is not a readable shard index ({exc})") from None
        return [folder / shard for shard in shards]
    legacy = folder / f"{stem}.bin"
    if legacy.is_file():
        return [legacy]
    raise WeightsError(folder, f"holds no {stem}.safetensors", hint="download the folder again")


def _legacy_rename(key: str) -> str:
    for old, new in _LEGACY_ATTENTION_NAMES.items():
        if old in key and ".attentions." in key:
            key = key.replace(old, new)
    return key


def load_diffusers_model(class_name: str, folder: Path) -> nn.Module:
    """A diffusers model (``UNet2DConditionModel``, ``AutoencoderKL``, ``HunyuanDiT2DModel``) from its folder."""
    import diffusers

    model_class = getattr(diffusers, class_name)
    try:
        config = model_class.load_config(str(folder))
    except (OSError, ValueError) as exc:
        raise WeightsError(folder, f"has no readable config.json ({exc})") from None
    files = weight_files(folder, _DIFFUSERS_STEM)
    if files[0].suffix == ".bin":
        return load_torch_module(lambda: model_class.from_config(config), files[0], rename=_legacy_rename)
    return load_safetensors_module(lambda: model_class.from_config(config), files, rename=_legacy_rename)


def load_transformers_model(class_name: str, folder: Path) -> nn.Module:
    """A transformers model (CLIP, BERT, T5 encoders) from its folder, in the dtype of its file.

    When the file's tensor names are exactly the model's, it is read zero-copy like the diffusers
    parts (so on the CPU its pages are handed back as they are converted); otherwise (older
    releases' layouts, tied weights saved once) through transformers' own loader.
    """
    import transformers

    model_class = getattr(transformers, class_name)
    files = weight_files(folder, _TRANSFORMERS_STEM)
    try:
        config = model_class.config_class.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(folder, f"has no readable config.json ({exc})") from None
    with parameters_on_meta():
        model = model_class(config)
    stored = {name for path in files for name in read_safetensors_header(path).tensors}
    if stored == set(model.state_dict()):
        return load_safetensors_module(lambda: model, files)
    dtype = stored_size_and_dtype(files)[1] or "float32"
    try:
        model, info = model_class.from_pretrained(str(folder), local_files_only=True, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(folder, f"cannot be loaded as {class_name} ({exc})") from None
    if info["missing_keys"] or info["mismatched_keys"]:
        problems = sorted(info["missing_keys"]) + [str(item[0]) if isinstance(item, tuple) else str(item) for item in info["mismatched_keys"]]
        raise WeightsError(folder, f"does not match {class_name}: missing or reshaped {', '.join(problems[:8])}",
                           hint="check that these weights belong to this model and version")
    return model.eval()


def block_list(module: nn.Module) -> list[nn.Module]:
    """The longest list of repeated blocks in a transformer (what ``stream`` mode moves one at a time)."""
    from torch import nn

    lists = [child for name, child in module.named_modules()
             if isinstance(child, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES]
    return list(max(lists, key=len)) if lists else []


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


@dataclass(frozen=True)
class ComponentSpec:
    """One part of a weights folder and how the memory manager loads and streams it.

    Args:
        name: the memory-manager name, e.g. ``mvd_std.unet``.
        subfolder: the part's folder inside the weights folder.
        class_name: the diffusers or transformers class.
        library: ``diffusers`` or ``transformers``.
        blocks: the module's movable units, for ``stream`` mode.
    """

    name: str
    subfolder: str
    class_name: str
    library: str
    blocks: Callable[[nn.Module], list[nn.Module]] | None = None

    def files(self, root: Path) -> list[Path]:
        return weight_files(root / self.subfolder, _DIFFUSERS_STEM if self.library == "diffusers" else _TRANSFORMERS_STEM)

    def load(self, root: Path) -> nn.Module:
        loader = load_diffusers_model if self.library == "diffusers" else load_transformers_model
        return loader(self.class_name, root / self.subfolder)


def register_components(memory: Any, root: Path, prefix: str, specs: tuple[ComponentSpec, ...]) -> dict[str, str]:
    """Declare each part of the folder at ``root`` to the memory manager; returns part -> component name.

    Every part computes in Hunyuan3D-1's precision; the dtype its file is stored in only decides
    how it is read and parked.
    """
    names = {}
    for spec in specs:
        name = names[spec.subfolder] = f"{prefix}.{spec.name}"
        memory.register(name, lambda spec=spec: spec.load(root), precision=PRECISION, files=spec.files(root), blocks=spec.blocks)
    return names


def load_scheduler(folder: Path) -> Any:
    """The diffusers scheduler a ``scheduler/scheduler_config.json`` names, configured as saved."""
    import diffusers
    from diffusers import SchedulerMixin

    try:
        config = json.loads((folder / "scheduler_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(folder, f"has no readable scheduler_config.json ({exc})") from None
    scheduler_class = getattr(diffusers, str(config.get("_class_name", "")), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise WeightsError(folder, f"names an unknown scheduler {config.get('_class_name')!r}")
    return scheduler_class.from_config(config)


@dataclass(frozen=True)
class ImageNormalizer:
    """What a ``preprocessor_config.json`` asks for: resize the short side, centre-crop, rescale, normalise.

    Implemented here with PIL rather than through transformers' processors, whose resizing
    changed between releases.
    """

    shortest_edge: int | None
    crop: tuple[int, int] | None  # (height, width)
    resample: int
    rescale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_folder(cls, folder: Path) -> ImageNormalizer:
        path = folder / "preprocessor_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(path, f"is not readable ({exc})") from None
        size = config.get("size")
        shortest = size.get("shortest_edge", min(size.get("height", 0), size.get("width", 0)) or None) if isinstance(size, dict) else size
        crop = config.get("crop_size")
        if isinstance(crop, dict):
            crop = (crop["height"], crop["width"])
        elif isinstance(crop, int):
            crop = (crop, crop)
        normalize = config.get("do_normalize", True)
        mean, std = (config.get("image_mean", 0.0), config.get("image_std", 1.0)) if normalize else (0.0, 1.0)
        return cls(
            shortest_edge=shortest if config.get("do_resize", True) else None,
            crop=crop if config.get("do_center_crop", True) else None,
            resample=int(config.get("resample", 3)),
            rescale=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
            mean=tuple(mean) if isinstance(mean, list) else (float(mean),) * 3,
            std=tuple(std) if isinstance(std, list) else (float(std),) * 3,
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, H, W) float32."""
        import numpy as np
        import torch

        image = image.convert("RGB")
        if self.shortest_edge is not None:
            width, height = image.size
            scale = self.shortest_edge / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if size != image.size:
                image = image.resize(size, resample=self.resample)
        if self.crop is not None:
            crop_height, crop_width = self.crop
            width, height = image.size
            left, top = (width - crop_width) // 2, (height - crop_height) // 2
            image = image.crop((left, top, left + crop_width, top + crop_height))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) * self.rescale).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((pixels - mean) / std)[None]
