"""A Hunyuan3D-2 model folder's ``config.yaml``, read into typed settings.

Each DiT folder (``hunyuan3d-dit-v2-0``, ``-mini``, ``-mv`` and their ``-fast``/``-turbo``
variants) holds one ``config.yaml`` with five sections: ``model`` (the DiT), ``vae``,
``conditioner``, ``scheduler`` and ``image_processor``. The ``target`` class paths of the
official package tell the variants apart; the ``params`` give the sizes. The files are read from
the user's folder at run time, so a checkpoint with other sizes loads without a code change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...memory.loading import WeightsError

if TYPE_CHECKING:
    from ..hunyuan3d_v2_1.config import DiT21Config

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.fp16.safetensors"
VIEW_NAMES = ("front", "left", "back", "right")  # index = the view's slot in the multiview embedding
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class DiTConfig:
    """The flow-matching transformer (``Hunyuan3DDiT``).

    Args:
        in_channels: width of each latent token (64).
        context_in_dim: width of the conditioner's tokens (1536 for DINOv2-giant).
        hidden_size: token width inside the transformer.
        mlp_ratio: hidden width of the MLPs as a multiple of ``hidden_size``.
        num_heads: attention heads; ``hidden_size`` must divide evenly.
        depth: double-stream blocks (latents and condition with separate weights).
        depth_single_blocks: single-stream blocks over the joined sequence.
        qkv_bias: whether the double blocks' QKV projections have a bias.
        guidance_embed: guidance-distilled (``-fast``, ``-turbo``): the guidance scale is an
            input of the model instead of a second, unconditional pass.
    """

    in_channels: int = 64
    context_in_dim: int = 1536
    hidden_size: int = 1024
    mlp_ratio: float = 4.0
    num_heads: int = 16
    depth: int = 16
    depth_single_blocks: int = 32
    qkv_bias: bool = True
    guidance_embed: bool = False


@dataclass(frozen=True)
class DinoConfig:
    """The DINOv2 ViT of the conditioner (its ``Dinov2Config``, the fields that matter).

    Args:
        hidden_size: token width (1536 for giant).
        num_hidden_layers: transformer layers.
        num_attention_heads: attention heads.
        patch_size: pixels per patch side.
        image_size: the side the position embeddings were trained at.
        layer_norm_eps: epsilon of every LayerNorm.
        mlp_ratio: the MLP's width as a multiple of ``hidden_size`` (before the SwiGLU's 2/3).
        qkv_bias: whether query, key and value projections have a bias.
        use_swiglu_ffn: the SwiGLU MLP of DINOv2-giant (Hunyuan3D-2); else the plain GELU MLP
            of DINOv2-large (Hunyuan3D-2.1).
    """

    hidden_size: int = 1536
    num_hidden_layers: int = 40
    num_attention_heads: int = 24
    patch_size: int = 14
    image_size: int = 518
    layer_norm_eps: float = 1e-6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_swiglu_ffn: bool = True


@dataclass(frozen=True)
class ConditionerConfig:
    """The image conditioner: DINOv2 on one picture, or on several named views (2mv).

    Args:
        dino: the ViT's sizes.
        image_size: the side the picture is resized to before the ViT (518).
        use_cls_token: keep the class token in the output tokens.
        view_count: the number of view slots of a multiview conditioner; 0 for one picture.
    """

    dino: DinoConfig
    image_size: int = 518
    use_cls_token: bool = True
    view_count: int = 0

    @property
    def multiview(self) -> bool:
        return self.view_count > 0


@dataclass(frozen=True)
class SchedulerConfig:
    """The sampler's schedule.

    Args:
        consistency: the consistency schedule of the step-distilled ``-turbo`` models; else
            plain flow-matching Euler.
        num_train_timesteps: the training grid (1000).
        pcm_timesteps: the consistency schedule's coarse grid.
        shift: the flow-matching time shift (1.0, no shift, in every released config).
    """

    consistency: bool = False
    num_train_timesteps: int = 1000
    pcm_timesteps: int = 50
    shift: float = 1.0


@dataclass(frozen=True)
class ImageProcessorConfig:
    """How pictures are framed: a centred object with a border, on white, at ``size`` pixels.

    Args:
        size: side of the prepared picture (512).
        border_ratio: share of the side left empty around the object (0.15).
        multiview: takes named views instead of one picture.
    """

    size: int = 512
    border_ratio: float = 0.15
    multiview: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``config.yaml`` says; ``vae`` stays the raw ``params`` mapping for the ShapeVAE."""

    dit: DiTConfig | DiT21Config
    conditioner: ConditionerConfig
    scheduler: SchedulerConfig
    image_processor: ImageProcessorConfig
    vae: dict[str, Any]


def _section(raw: dict[str, Any], name: str, path: Path) -> tuple[str, dict[str, Any]]:
    section = raw.get(name)
    if not isinstance(section, dict):
        raise WeightsError(path, f"has no {name!r} section", hint="download the model folder again")
    params = section.get("params") or {}
    if not isinstance(params, dict):
        raise WeightsError(path, f"has a {name!r} section whose params are not a mapping", hint="download the model folder again")
    return str(section.get("target", "")), params


def _pick(params: dict[str, Any], cls: type, path: Path, section: str) -> dict[str, Any]:
    """The fields of ``cls`` found in ``params``, each checked to have the default's type."""
    import dataclasses

    return {field.name: checked_value(params[field.name], type(field.default), path, f"{section}.{field.name}")
            for field in dataclasses.fields(cls) if field.name in params}


def checked_value(value: Any, kind: type, path: str | Path, name: str) -> Any:
    """``value`` as an int, float or bool setting called ``name``, or a WeightsError naming the file."""
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        # YAML 1.1 reads ``1e-6`` (no dot) as a string.
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise WeightsError(path, f"{name} = {value!r} is not {_KIND_NAMES[kind]}", hint="check the model folder's config.yaml")
    return value


def parse_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    """Typed settings from a parsed ``config.yaml`` (``path`` names the file in errors)."""
    _target, dit_params = _section(raw, "model", path)
    dit = DiTConfig(**_pick(dit_params, DiTConfig, path, "model.params"))
    if dit.hidden_size % dit.num_heads:
        raise WeightsError(path, f"model hidden_size {dit.hidden_size} is not a multiple of num_heads {dit.num_heads}",
                           hint="check the model folder's config.yaml")

    _target, conditioner_params = _section(raw, "conditioner", path)
    encoder = conditioner_params.get("main_image_encoder")
    if not isinstance(encoder, dict) or not isinstance(encoder.get("kwargs"), dict):
        raise WeightsError(path, "conditioner.params.main_image_encoder has no kwargs", hint="check the model folder's config.yaml")
    kind = encoder.get("type")
    if kind not in ("DinoImageEncoder", "DinoImageEncoderMV"):
        raise WeightsError(path, f"conditioner type {kind!r} is not supported (DinoImageEncoder or DinoImageEncoderMV)",
                           hint="use a Hunyuan3D-2, 2mini or 2mv model folder")
    kwargs = encoder["kwargs"]
    dino_raw = kwargs.get("config")
    if not isinstance(dino_raw, dict):
        raise WeightsError(path, "the conditioner has no inline DINOv2 config", hint="check the model folder's config.yaml")
    # Transformers' Dinov2Config defaults to the plain MLP when the option is absent.
    dino = DinoConfig(**{"use_swiglu_ffn": False, **_pick(dino_raw, DinoConfig, path, "conditioner DINOv2 config")})
    view_count = int(kwargs.get("view_num", 4)) if kind == "DinoImageEncoderMV" else 0
    conditioner = ConditionerConfig(dino=dino, image_size=int(kwargs.get("image_size", 224)),
                                    use_cls_token=bool(kwargs.get("use_cls_token", True)), view_count=view_count)
    if conditioner.image_size // dino.patch_size != dino.image_size // dino.patch_size:
        # The official checkpoints feed the ViT exactly its trained grid, so its position embeddings are never resampled.
        raise WeightsError(path, f"the conditioner resizes to {conditioner.image_size} px but its DINOv2 was trained at {dino.image_size} px",
                           hint="check the model folder's config.yaml")
    if view_count > len(VIEW_NAMES):
        raise WeightsError(path, f"the conditioner has {view_count} view slots; only {len(VIEW_NAMES)} are named",
                           hint="check the model folder's config.yaml")

    target, scheduler_params = _section(raw, "scheduler", path)
    scheduler = SchedulerConfig(consistency="Consistency" in target, **_pick(scheduler_params, SchedulerConfig, path, "scheduler.params"))

    target, processor_params = _section(raw, "image_processor", path)
    processor = ImageProcessorConfig(multiview=target.endswith("MVImageProcessorV2"),
                                     **_pick(processor_params, ImageProcessorConfig, path, "image_processor.params"))
    if processor.multiview != conditioner.multiview:
        raise WeightsError(path, "the image processor and the conditioner disagree on multiview input",
                           hint="check the model folder's config.yaml")

    _target, vae = _section(raw, "vae", path)
    return ModelConfig(dit=dit, conditioner=conditioner, scheduler=scheduler, image_processor=processor, vae=dict(vae))


def read_config(folder: Path, parse: Callable[[dict[str, Any], Path], ModelConfig] = parse_config) -> ModelConfig:
    """Read ``folder/config.yaml`` with ``parse``; a missing or unreadable file is a WeightsError naming it."""
    import yaml

    path = folder / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WeightsError(path, f"cannot be read: {exc.strerror or exc}", hint="download the model folder again") from None
    except yaml.YAMLError as exc:
        raise WeightsError(path, f"is not valid YAML ({exc})", hint="download the model folder again") from None
    if not isinstance(raw, dict):
        raise WeightsError(path, "is not a YAML mapping", hint="download the model folder again")
    return parse(raw, path)
