"""The ``hunyuan3d-2.1`` shape pipeline: Hunyuan3D-2's steps with the 2.1 DiT and its ``.ckpt`` file.

Every step (background, DINOv2 condition, flow-matching sampling with classifier-free guidance,
ShapeVAE decoding, surface extraction) is ``Hunyuan3D2Pipeline``'s; this class only names the
weights folder, reads its config with the 2.1 DiT's sizes and registers the three parts of
``model.fp16.ckpt`` (its ``conditioner``, ``model`` and ``vae`` entries) with the memory manager.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...texture.stage import TEXTURE, TEXTURE_PARAMS
from ...weights import HUNYUAN3D_2_1_DIT, WeightFolder
from .. import register
from ..base import SEED, Param
from ..hunyuan3d_v1.pipeline import BACKGROUND_METHOD, PREVIEW_STEPS, REMOVE_BACKGROUND, TEXT_IMAGE_SIZE, TEXT_STEPS
from ..hunyuan3d_v2.config import parse_config, read_config
from ..hunyuan3d_v2.pipeline import (
    CHUNK_SIZE,
    DECODERS,
    GUIDANCE,
    MAX_FACES,
    PRECISION,
    PREVIEW_OCTREE_RESOLUTION,
    Hunyuan3D2Pipeline,
)

if TYPE_CHECKING:
    import torch

    from ..hunyuan3d_v2.config import ModelConfig

WEIGHTS_FILE = "model.fp16.ckpt"
DIT_TARGET = "HunYuanDiTPlain"


def parse_config_21(raw: dict[str, Any], path: Path) -> ModelConfig:
    """A 2.1 ``config.yaml``: Hunyuan3D-2's sections, with the ``model`` section read as the 2.1 DiT."""
    import dataclasses

    from ...memory.loading import WeightsError
    from .config import DiT21Config

    config = parse_config(raw, path)
    model = raw["model"]
    if not str(model.get("target", "")).endswith(DIT_TARGET):
        raise WeightsError(path, f"describes a {model.get('target')!r} model, not Hunyuan3D-2.1's {DIT_TARGET}",
                           hint=f"use the {HUNYUAN3D_2_1_DIT.folder} folder of {HUNYUAN3D_2_1_DIT.repo_id}")
    try:
        dit = DiT21Config.from_params(model.get("params") or {})
    except (TypeError, ValueError) as exc:
        raise WeightsError(path, str(exc), hint="check the model folder's config.yaml") from None
    return dataclasses.replace(config, dit=dit)


def load_conditioner(path: Path, config: ModelConfig) -> torch.nn.Module:
    from ...memory import load_torch_module
    from ..hunyuan3d_v2.conditioner import ImageConditioner

    return load_torch_module(lambda: ImageConditioner(config.conditioner), path, entry="conditioner")


def load_vae(path: Path, config: ModelConfig) -> torch.nn.Module:
    """The ShapeVAE decoder from the checkpoint's ``vae`` entry; the point-cloud encoder it also holds is skipped."""
    from ...memory import load_torch_module
    from ..hunyuan3d_v2.vae import ENCODER_PREFIXES, ShapeVAE, ShapeVAEConfig

    vae_config = ShapeVAEConfig.from_params(config.vae, path.parent / "config.yaml")
    return load_torch_module(lambda: ShapeVAE(vae_config), path, entry="vae",
                             rename=lambda key: None if key.startswith(ENCODER_PREFIXES) else key)


class Hunyuan3D21Pipeline(Hunyuan3D2Pipeline):
    name = "hunyuan3d-2.1"
    description = "Hunyuan3D-2.1: a picture to a shape (3.3 B DiT with mixture-of-experts blocks, the newest)"
    params = (
        SEED,
        Param("steps", int, 50, "denoising steps (50 upstream, 30 in its web demo; fewer is faster, rougher)", minimum=2, maximum=200,
              preview=PREVIEW_STEPS),
        GUIDANCE,
        MAX_FACES,
        REMOVE_BACKGROUND,
        BACKGROUND_METHOD,
        TEXT_STEPS,
        TEXT_IMAGE_SIZE,
        Param("octree_resolution", int, 384,
              "cells per axis of the grid the surface is extracted from (384 upstream; 256 is quicker, coarser)",
              minimum=16, maximum=1024, advanced=True, preview=PREVIEW_OCTREE_RESOLUTION),
        Param("volume_decoder", str, "plain",
              "how the grid is decoded: flashvdm (coarse to fine with adaptive attention, with this model's own VAE), "
              "hierarchical (coarse to fine) or plain (every point) (plain upstream)", choices=DECODERS, advanced=True),
        CHUNK_SIZE,
        TEXTURE,
        *TEXTURE_PARAMS,
    )

    @property
    def dit_folder(self) -> WeightFolder:
        return HUNYUAN3D_2_1_DIT

    @property
    def turbo_vae_folder(self) -> None:
        """There is no turbo VAE for 2.1: every decoder, FlashVDM included, uses the checkpoint's own."""
        return None

    def read_config(self, dit_root: Path) -> ModelConfig:
        return read_config(dit_root, parse_config_21)

    def register_parts(self, memory: Any, dit_root: Path, turbo_vae_root: Path | None, config: ModelConfig,
                       decoding: Callable[[int], int]) -> dict[str, str]:
        """The three entries of ``model.fp16.ckpt``; the manager sizes each from the checkpoint's entry of that name."""
        from .dit import load_dit

        path = dit_root / WEIGHTS_FILE
        names = {part: f"{dit_root.name}.{part}" for part in ("conditioner", "dit", "vae")}
        memory.register(names["conditioner"], lambda: load_conditioner(path, config), precision=PRECISION,
                        files=[path], prefix="conditioner.", blocks=lambda module: module.blocks())
        memory.register(names["dit"], lambda: load_dit(path, config.dit), precision=PRECISION,
                        files=[path], prefix="model.", blocks=lambda module: module.stream_units())
        memory.register(names["vae"], lambda: load_vae(path, config), precision=PRECISION,
                        files=[path], prefix="vae.", blocks=lambda module: list(module.blocks), working_bytes=decoding)
        return names


register(Hunyuan3D21Pipeline)
