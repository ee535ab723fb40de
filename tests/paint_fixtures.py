"""Tiny random Hunyuan3D-2 Paint folders in the released layouts, for tests.

``hunyuan3d-delight-v2-0`` is written by diffusers' own InstructPix2Pix pipeline
(``save_pretrained``: model_index.json, scheduler/, unet/, vae/, text_encoder/, tokenizer/).
``hunyuan3d-paint-v2-0`` (or ``-turbo``) holds model_index.json, scheduler/, vae/ and the 2.5D
UNet: ``unet/config.json`` (a plain ``UNet2DConditionModel`` config) and the weights under the
released key names, as the release stores them: the paint folder's UNet as
``diffusion_pytorch_model.bin`` (a ``torch.save`` state dict, which the official 2.0.2 loader
reads strictly) and its VAE as safetensors; the turbo folder's UNet as safetensors and its VAE
as ``.bin``.

The configs are small but keep what the released models fix: 512^2 pictures, the paint UNet's
1024-wide prompt embeddings and 1280-wide time embedding, 4 latent channels. Weights are random with a spread that keeps activations of order one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DELIGHT_FOLDER = "hunyuan3d-delight-v2-0"
PAINT_FOLDER = "hunyuan3d-paint-v2-0"
PAINT_TURBO_FOLDER = "hunyuan3d-paint-v2-0-turbo"
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
              "steps_offset": 1}
# Cross-attention only at the coarsest level keeps the 32^2 latents cheap on a CPU.
_UNET = dict(sample_size=32, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
             down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=8)
DELIGHT_UNET = dict(_UNET, in_channels=8, cross_attention_dim=32)
PAINT_UNET = dict(_UNET, in_channels=4, cross_attention_dim=1024, time_embedding_dim=1280)
# Five levels: latents of 32^2 (the released VAE's four give 64^2), which keeps CPU tests quick.
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8, 8, 8, 8), layers_per_block=1,
           norm_num_groups=4, sample_size=512, down_block_types=("DownEncoderBlock2D",) * 5,
           up_block_types=("UpDecoderBlock2D",) * 5)
TEXT_ENCODER = dict(vocab_size=40, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter with random values of a trained-looking spread (matrices ~ 1/sqrt(fan-in), norms ~ 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim > 1:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return module.eval()


def tiny_tokenizer():
    """A CLIP tokenizer with a vocabulary of single letters (the delighting prompt is empty anyway)."""
    import tempfile

    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix="tiny-tokenizer-"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def write_delight_folder(root: Path, seed: int = 1) -> Path:
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = root / DELIGHT_FOLDER
    tokenizer = tiny_tokenizer()
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=randomise(AutoencoderKL(**VAE), seed), text_encoder=randomise(CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)), seed + 1),
        tokenizer=tokenizer, unet=randomise(UNet2DConditionModel(**DELIGHT_UNET), seed + 2),
        scheduler=EulerAncestralDiscreteScheduler(**SCHEDULER, prediction_type="epsilon"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def write_paint_folder(root: Path, *, turbo: bool = False, seed: int = 11) -> Path:
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler
    from safetensors.torch import save_file

    from backend.texture.paint.unet import MultiviewUNet

    folder = root / (PAINT_TURBO_FOLDER if turbo else PAINT_FOLDER)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    unet = randomise(MultiviewUNet(PAINT_UNET), seed)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **PAINT_UNET}))
    if turbo:
        save_file({key: tensor.contiguous() for key, tensor in unet.state_dict().items()},
                  folder / "unet" / "diffusion_pytorch_model.safetensors")
    else:
        torch.save(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    randomise(AutoencoderKL(**VAE), seed + 1).save_pretrained(folder / "vae", safe_serialization=not turbo)
    EulerAncestralDiscreteScheduler(**SCHEDULER, prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanPaintPipeline", "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "unet": ["modules", "UNet2p5DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def write_tiny_paint_weights(root: Path, *, turbo: bool = False) -> dict[str, Path]:
    """Write tiny delighting and paint folders under ``root`` (a ``--weights`` folder); returns {"delight": path, "paint": path}."""
    root = Path(root)
    return {"delight": write_delight_folder(root), "paint": write_paint_folder(root, turbo=turbo)}
