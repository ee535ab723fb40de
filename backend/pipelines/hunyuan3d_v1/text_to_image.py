"""Text to image: HunyuanDiT v1.1 (distilled) with perturbed-attention guidance, as Hunyuan3D-1 runs it.

Upstream's settings: 1024x1024, 25 steps, PAG on transformer blocks 16-19 with scale 1.3, the
prompt followed by ",white background,3D style,best quality" (in Chinese) and a fixed Chinese
negative prompt. The model's four parts are memory-manager components; diffusers'
``HunyuanDiTPAGPipeline`` runs them. The seed feeds a CPU generator, so it means the same on
every device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .components import ComponentSpec, block_list, load_scheduler

if TYPE_CHECKING:
    import torch
    from PIL import Image

PROMPT_SUFFIX = ",白色背景,3D风格,最佳质量"
NEGATIVE_PROMPT = (
    "文本,特写,裁剪,出框,最差质量,低质量,JPEG伪影,PGLY,重复,病态,残缺,多余的手指,变异的手,画得不好的手,画得不好的脸,变异,畸形,模糊,"
    "脱水,糟糕的解剖学,糟糕的比例,多余的肢体,克隆的脸,毁容,恶心的比例,畸形的肢体,缺失的手臂,缺失的腿,额外的手臂,额外的腿,融合的手指,"
    "手指太多,长脖子"
)
PAG_LAYERS = ["blocks.(16|17|18|19)"]
PAG_SCALE = 1.3
IMAGE_SIZE = 1024
STEPS = 25
STAGE = "text_to_image"

PARTS = (
    ComponentSpec("transformer", "transformer", "HunyuanDiT2DModel", "diffusers", lambda m: list(m.blocks)),
    ComponentSpec("vae", "vae", "AutoencoderKL", "diffusers"),
    ComponentSpec("text_encoder", "text_encoder", "BertModel", "transformers", block_list),
    ComponentSpec("text_encoder_2", "text_encoder_2", "T5EncoderModel", "transformers", block_list),
)


def full_prompt(prompt: str) -> str:
    return prompt.strip() + PROMPT_SUFFIX


def generate_image(root: Path, modules: dict[str, Any], device: torch.device, prompt: str, *, seed: int,
                   steps: int = STEPS, size: int = IMAGE_SIZE, on_step: Callable[[int, int], None] | None = None) -> Image.Image:
    """One picture of ``prompt`` from the HunyuanDiT folder at ``root``; ``modules`` holds PARTS by subfolder.

    ``size`` other than 1024 is for tests and previews: resolution binning is off, which leaves
    1024x1024 (one of HunyuanDiT's trained sizes) unchanged.
    """
    import torch
    from diffusers import HunyuanDiTPAGPipeline
    from transformers import AutoTokenizer

    class ManagedPipeline(HunyuanDiTPAGPipeline):
        # The memory manager places the parts; in stream mode some blocks are still in host memory.
        @property
        def _execution_device(self) -> torch.device:
            return device

    pipe = ManagedPipeline(
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True),
        transformer=modules["transformer"],
        scheduler=load_scheduler(root / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=modules["text_encoder_2"],
        tokenizer_2=AutoTokenizer.from_pretrained(str(root / "tokenizer_2"), local_files_only=True),
        pag_applied_layers=PAG_LAYERS,
    )
    pipe.set_progress_bar_config(disable=True)

    def step_end(_pipe: Any, step: int, _timestep: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step + 1, steps)
        return {}

    with torch.inference_mode():
        images = pipe(
            prompt=full_prompt(prompt),
            negative_prompt=NEGATIVE_PROMPT,
            num_inference_steps=steps,
            pag_scale=PAG_SCALE,
            width=size,
            height=size,
            generator=torch.Generator("cpu").manual_seed(seed),
            use_resolution_binning=False,
            callback_on_step_end=step_end,
            return_dict=False,
        )[0]
    return images[0]


def draw_prompt(root: Path, prompt: str, ctx: Any, *, seed: int, steps: int = STEPS, size: int = IMAGE_SIZE) -> Image.Image:
    """The picture of ``prompt`` as one job stage: the parts registered with ``ctx.memory``, progress per step.

    Any pipeline that starts from a picture uses it for prompts (Hunyuan3D-1 and -2 alike).
    """
    from .components import register_components

    memory = ctx.memory
    names = register_components(memory, root, "hunyuandit", PARTS)
    ctx.progress(STAGE, 0, steps, "drawing the prompt")

    def draw(modules: dict[str, Any]) -> Image.Image:
        return generate_image(root, modules, memory.device, prompt,
                              seed=seed, steps=steps, size=size, on_step=lambda step, total: ctx.progress(STAGE, step, total))

    return ctx.run_stage(STAGE, names, draw)
