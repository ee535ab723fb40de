"""Hunyuan3D-1 end to end: tiny lite, std and HunyuanDiT folders laid out as released, through the real loaders."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.errors import BackendError
from backend.memory import MemoryManager
from backend.pipelines.base import JobContext, JobRequest
from backend.pipelines.hunyuan3d_v1.background import frame_object, has_meaningful_alpha, prepare_condition_image, white_out_background
from backend.pipelines.hunyuan3d_v1.multiview import LiteMultiview, StdMultiview, split_grid
from backend.pipelines.hunyuan3d_v1.multiview.lite import guidance_ramp
from backend.pipelines.hunyuan3d_v1.pipeline import Hunyuan3D1LitePipeline, Hunyuan3D1StdPipeline
from backend.pipelines.hunyuan3d_v1.svrm.loading import save_checkpoint
from backend.protocol import ErrorCode
from backend.weights import HUNYUAN_DIT, MVD_LITE, MVD_STD, check_folders, download

TEXT_TOKENS = 77
HIDDEN = 32
POOLED = 16
# Small sizes for the CPU: views of 16 pixels, a 32-pixel reference, 64-pixel text-to-image.
FAST = {"steps": 2, "view_size": 16, "resolution": 32, "max_faces": 2000, "text_steps": 2, "text_image_size": 64}


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, so no test sees the machine's."""
    import huggingface_hub.constants

    hub = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return hub


# -- tiny folders, saved the way the released ones were ------------------------------------------

def tiny_unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8, **extra,
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=32)


def tiny_vision(projection_dim: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_attention_heads=2,
                                                          num_hidden_layers=2, image_size=32, patch_size=8, projection_dim=projection_dim))


def save_half(model, folder: Path) -> None:
    model.to(torch.float16).save_pretrained(str(folder))


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def euler_scheduler(folder: Path, prediction_type: str, spacing: str) -> None:
    from diffusers import EulerAncestralDiscreteScheduler

    EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", prediction_type=prediction_type,
                                    steps_offset=1, timestep_spacing=spacing).save_pretrained(str(folder))


def normalizer_config(folder: Path, size: int, mean, std, resample: int) -> None:
    write_json(folder / "preprocessor_config.json", {
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_normalize": True, "do_rescale": True,
        "do_resize": True, "image_mean": mean, "image_std": std, "resample": resample, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size}, "image_processor_type": "CLIPImageProcessor"})


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def ramp() -> list[float]:
    return [round(0.2 + 0.01 * i, 4) for i in range(TEXT_TOKENS)]


def make_lite(root: Path) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = root / "mvd_lite"
    torch.manual_seed(0)
    save_half(tiny_unet(HIDDEN), folder / "unet")
    save_half(tiny_vae(), folder / "vae")
    save_half(CLIPTextModel(CLIPTextConfig(hidden_size=HIDDEN, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                                           vocab_size=10, max_position_embeddings=TEXT_TOKENS, bos_token_id=0, eos_token_id=1,
                                           pad_token_id=1)), folder / "text_encoder")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(folder / "tokenizer"))
    save_half(tiny_vision(HIDDEN), folder / "vision_encoder")
    euler_scheduler(folder / "scheduler", "v_prediction", "linspace")
    normalizer_config(folder / "feature_extractor_vae", 32, [0.5] * 3, [0.8] * 3, 2)
    normalizer_config(folder / "feature_extractor_clip", 32, CLIP_MEAN, CLIP_STD, 3)
    write_json(folder / "model_index.json", {"_class_name": "Hunyuan3d_MVD_Lite_Pipeline", "ramping_coefficients": ramp()})
    return folder


def make_std(root: Path) -> Path:
    folder = root / "mvd_std"
    torch.manual_seed(1)
    save_half(tiny_unet(2 * POOLED, addition_embed_type="text_time", addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=8 * 6 + POOLED), folder / "unet")
    save_half(tiny_vae(), folder / "vae")
    save_half(tiny_vision(POOLED), folder / "vision_encoder")
    save_half(tiny_vision(POOLED), folder / "vision_encoder_2")
    euler_scheduler(folder / "scheduler", "epsilon", "trailing")
    normalizer_config(folder / "feature_extractor_vae", 32, [0.5] * 3, [0.5] * 3, 2)
    normalizer_config(folder / "vision_processor", 32, CLIP_MEAN, CLIP_STD, 3)
    torch.save(torch.randn(1, TEXT_TOKENS, 2 * POOLED) * 0.1, folder / "uc_text_emb.pt")
    torch.save(torch.randn(1, POOLED) * 0.1, folder / "uc_text_emb_2.pt")
    write_json(folder / "model_index.json", {"_class_name": "HunYuan3DMVDPipeline", "ramping_coefficients": ramp()})
    return folder


def make_hunyuan_dit(root: Path) -> Path:
    from diffusers import DDPMScheduler, HunyuanDiT2DModel
    from transformers import BertConfig, BertModel, BertTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    folder = root / "hunyuanDiT"
    torch.manual_seed(2)
    # 20 blocks so that upstream's PAG layers (blocks 16 to 19) exist.
    save_half(HunyuanDiT2DModel(sample_size=16, num_layers=20, patch_size=2, attention_head_dim=8, num_attention_heads=2,
                                in_channels=4, cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=8,
                                hidden_size=16, text_len=8, text_len_t5=8, activation_fn="gelu-approximate"), folder / "transformer")
    save_half(tiny_vae(), folder / "vae")
    save_half(BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                   max_position_embeddings=16)), folder / "text_encoder")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "3d", ","]))
    BertTokenizer(str(vocab)).save_pretrained(str(folder / "tokenizer"))
    vocab.unlink()
    save_half(T5EncoderModel(T5Config(vocab_size=8, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)), folder / "text_encoder_2")
    T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0), ("▁cat", -2.0)],
                extra_ids=0).save_pretrained(str(folder / "tokenizer_2"))
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.03, prediction_type="v_prediction",
                  steps_offset=1).save_pretrained(str(folder / "scheduler"))
    write_json(folder / "model_index.json", {"_class_name": "HunyuanDiTPipeline"})
    return folder


def make_svrm(root: Path) -> None:
    from test_svrm import sphere_svrm

    (root / "svrm").mkdir(parents=True, exist_ok=True)
    save_checkpoint(sphere_svrm(radius=0.25), root / "svrm" / "svrm.safetensors")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    make_lite(root)
    make_std(root)
    make_hunyuan_dit(root)
    make_svrm(root)
    return root


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def object_picture(size: int = 96) -> Image.Image:
    """A red disc with a blue stripe on a light grey backdrop, off centre."""
    picture = Image.new("RGB", (size, size), (230, 230, 230))
    pixels = np.asarray(picture).copy()
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.55) ** 2 + (xx - size * 0.4) ** 2 < (size * 0.25) ** 2
    pixels[disc] = (200, 30, 30)
    pixels[disc & (np.abs(yy - size * 0.55) < 3)] = (20, 20, 200)
    return Image.fromarray(pixels)
