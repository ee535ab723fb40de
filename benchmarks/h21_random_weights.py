"""Write a Hunyuan3D-2.1 weights folder of random values, full size, in the official layout.

For timing and memory runs without the released weights: ``DIR/hunyuan3d-dit-v2-1/config.yaml``
(the release's) and ``model.fp16.ckpt``, a ``torch.save`` file of ``{"model", "vae",
"conditioner"}`` with every key and shape of the release (752 DiT tensors, 410 VAE tensors with
the point-cloud encoder the pipeline skips, 439 DINOv2-large tensors; 3,682,873,537 float16
parameters, 7.37 GB). Values follow benchmarks/h2_random_weights.py (norms 1, biases 0, weights
N(0, 0.02)). The surface such weights decode to is noise; the run, its memory and its timing are real.

The file is laid out first without its data (``torch.serialization.skip_data``), then memory-mapped
and filled tensor by tensor, so writing it takes little memory (the kernel's page cache aside).

    python benchmarks/h21_random_weights.py DIR
    python -m backend generate --model hunyuan3d-2.1 --image examples/snowman.png --weights DIR -o noise.glb
"""

from __future__ import annotations

import argparse
import mmap
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from h2_random_weights import random_tensor  # noqa: E402

from backend.weights import HUNYUAN3D_2_1_DIT  # noqa: E402

GB = 1e9
DINO_LARGE = {
    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 1024,
    "image_size": 518, "initializer_range": 0.02, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4, "model_type": "dinov2",
    "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 24, "patch_size": 14, "qkv_bias": True, "torch_dtype": "float32",
    "use_swiglu_ffn": False,
}
# The release's config.yaml (tencent/Hunyuan3D-2.1: hunyuan3d-dit-v2-1/config.yaml).
RELEASED_CONFIG = {
    "model": {"target": "hy3dshape.models.denoisers.hunyuandit.HunYuanDiTPlain",
              "params": {"input_size": 4096, "in_channels": 64, "hidden_size": 2048, "context_dim": 1024, "depth": 21, "num_heads": 16,
                         "qk_norm": True, "text_len": 1370, "with_decoupled_ca": False, "use_attention_pooling": False,
                         "qk_norm_type": "rms", "qkv_bias": False, "use_pos_emb": False, "num_moe_layers": 6, "num_experts": 8,
                         "moe_top_k": 2}},
    "vae": {"target": "hy3dshape.models.autoencoders.ShapeVAE",
            "params": {"num_latents": 4096, "embed_dim": 64, "num_freqs": 8, "include_pi": False, "heads": 16, "width": 1024,
                       "num_encoder_layers": 8, "num_decoder_layers": 16, "qkv_bias": False, "qk_norm": True,
                       "scale_factor": 1.0039506158752403, "geo_decoder_mlp_expand_ratio": 4, "geo_decoder_downsample_ratio": 1,
                       "geo_decoder_ln_post": True, "point_feats": 4, "pc_size": 81920, "pc_sharpedge_size": 0}},
    "conditioner": {"target": "hy3dshape.models.conditioner.SingleImageEncoder",
                    "params": {"main_image_encoder": {"type": "DinoImageEncoder",
                                                      "kwargs": {"config": DINO_LARGE, "image_size": 518, "use_cls_token": True}}}},
    "scheduler": {"target": "hy3dshape.schedulers.FlowMatchEulerDiscreteScheduler", "params": {"num_train_timesteps": 1000}},
    "image_processor": {"target": "hy3dshape.preprocessors.ImageProcessorV2", "params": {"size": 512, "border_ratio": 0.15}},
    "pipeline": {"target": "hy3dshape.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
}


def point_encoder_shapes(params: dict) -> dict[str, tuple[int, ...]]:
    """The ShapeVAE's point-cloud encoder keys (``encoder.*``, ``pre_kl.*``): in the released file, never run by image-to-shape."""
    width, heads, channels = params["width"], params["heads"], params["embed_dim"]
    head_dim, fourier = width // heads, 3 * (2 * params["num_freqs"] + 1) + params["point_feats"]

    def block(prefix: str, attention: dict[str, tuple[int, ...]], norms: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        out = {f"{prefix}attn.{name}": shape for name, shape in attention.items()}
        out |= {f"{prefix}attn.c_proj.weight": (width, width), f"{prefix}attn.c_proj.bias": (width,)}
        out |= {f"{prefix}attn.attention.{norm}.{leaf}": (head_dim,) for norm in ("q_norm", "k_norm") for leaf in ("weight", "bias")}
        out |= {f"{prefix}{norm}.{leaf}": (width,) for norm in norms for leaf in ("weight", "bias")}
        out |= {f"{prefix}mlp.c_fc.weight": (4 * width, width), f"{prefix}mlp.c_fc.bias": (4 * width,),
                f"{prefix}mlp.c_proj.weight": (width, 4 * width), f"{prefix}mlp.c_proj.bias": (width,)}
        return out

    shapes = {"encoder.input_proj.weight": (width, fourier), "encoder.input_proj.bias": (width,)}
    shapes |= block("encoder.cross_attn.", {"c_q.weight": (width, width), "c_kv.weight": (2 * width, width)}, ("ln_1", "ln_2", "ln_3"))
    for layer in range(params["num_encoder_layers"]):
        shapes |= block(f"encoder.self_attn.resblocks.{layer}.", {"c_qkv.weight": (3 * width, width)}, ("ln_1", "ln_2"))
    shapes |= {"encoder.ln_post.weight": (width,), "encoder.ln_post.bias": (width,),
               "pre_kl.weight": (2 * channels, width), "pre_kl.bias": (2 * channels,)}
    return shapes


def released_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every entry's keys and shapes, from our modules built on the meta device with the folder's config."""
    from backend.pipelines.hunyuan3d_v2.conditioner import ImageConditioner
    from backend.pipelines.hunyuan3d_v2.vae import ShapeVAE, ShapeVAEConfig
    from backend.pipelines.hunyuan3d_v2_1 import HunyuanDiT21
    from backend.pipelines.hunyuan3d_v2_1.pipeline import parse_config_21

    config = parse_config_21(RELEASED_CONFIG, folder / "config.yaml")
    with torch.device("meta"):
        modules = {"model": HunyuanDiT21(config.dit), "vae": ShapeVAE(ShapeVAEConfig.from_params(config.vae)),
                   "conditioner": ImageConditioner(config.conditioner)}
    shapes = {entry: {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()} for entry, module in modules.items()}
    shapes["vae"] |= point_encoder_shapes(RELEASED_CONFIG["vae"]["params"])
    return shapes


def write_weights(root: Path, seed: int = 0) -> Path:
    """``root/hunyuan3d-dit-v2-1/`` with the release's config.yaml and a random ``model.fp16.ckpt``; returns the checkpoint."""
    folder = root / HUNYUAN3D_2_1_DIT.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(RELEASED_CONFIG, sort_keys=False))
    shapes = released_shapes(folder)
    path = folder / "model.fp16.ckpt"
    # Untouched allocations: their pages are never made resident, and skip_data writes no bytes for them.
    layout = {entry: {key: torch.empty(shape, dtype=torch.float16) for key, shape in part.items()} for entry, part in shapes.items()}
    with torch.serialization.skip_data():
        torch.save(layout, path)
    del layout
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)
    try:
        checkpoint = torch.load(path, mmap=True, weights_only=True)
    finally:
        torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE)
    generator = torch.Generator().manual_seed(seed)
    for entry, part in shapes.items():
        for key, shape in part.items():
            checkpoint[entry][key].copy_(random_tensor(key, shape, generator))
    del checkpoint
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the weights folder to write into (use it as --weights); needs 7.4 GB of disk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    path = write_weights(args.out, args.seed)
    print(f"wrote {path} ({path.stat().st_size / GB:.2f} GB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
