"""Write a Hunyuan3D-2 weights folder of random values, full size, in the official layout.

For timing and memory runs without the released weights: ``DIR/<folder>/config.yaml`` with the
released sizes and ``model.fp16.safetensors`` with every key and shape of the released file
(``conditioner.*``, ``model.*``, ``vae.*``, float16), plus the turbo VAE folder for ``-turbo``
models. The run, its memory and its timing are real; the surface is not a trained one. By default
the VAE's values are drawn so that its decoded field looks trained (``--field trained``: smooth,
about 30% of the box inside for unit-variance latents, peaked cross-attention), so coarse-to-fine
decoding and mesh extraction do the work they do on a real shape; ``--field noise`` keeps the plain
draw (norms 1, biases 0, weights N(0, 0.02)), whose field is noise that refines nearly everywhere.
The file is written tensor by tensor, so writing it takes little memory.

    python benchmarks/h2_random_weights.py hunyuan3d-2mini-turbo DIR
    python -m backend generate --model hunyuan3d-2mini-turbo --image examples/snowman.png --weights DIR -o noise.glb
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.pipelines.hunyuan3d_v2.conditioner import ImageConditioner  # noqa: E402
from backend.pipelines.hunyuan3d_v2.config import parse_config  # noqa: E402
from backend.pipelines.hunyuan3d_v2.dit import Hunyuan3DDiT  # noqa: E402
from backend.weights import HUNYUAN3D_2_MODELS  # noqa: E402

# The released sizes (the configs of tencent/Hunyuan3D-2 and -2mini); 2mv's config is not known here.
DINO_GIANT = {
    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 1536,
    "image_size": 518, "initializer_range": 0.02, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4, "model_type": "dinov2",
    "num_attention_heads": 24, "num_channels": 3, "num_hidden_layers": 40, "patch_size": 14, "qkv_bias": True, "torch_dtype": "float32",
    "use_swiglu_ffn": True,
}
FAMILIES = {
    # family: (double blocks, single blocks, latents, scale factor)
    "hunyuan3d-2": (16, 32, 3072, 0.9990943042622529),
    "hunyuan3d-2mini": (8, 16, 512, 1.0188137142395404),
}


def vae_params(latents: int, scale_factor: float) -> dict:
    return {"num_latents": latents, "embed_dim": 64, "num_freqs": 8, "include_pi": False, "heads": 16, "width": 1024,
            "num_decoder_layers": 16, "qkv_bias": False, "qk_norm": True, "scale_factor": scale_factor}


def released_config(model: str) -> dict:
    variant = next((v for v in ("fast", "turbo") if model.endswith("-" + v)), "")
    family = model.removesuffix("-" + variant) if variant else model
    if family not in FAMILIES:
        raise SystemExit(f"{model}: only the hunyuan3d-2 and hunyuan3d-2mini models have known sizes")
    depth, single, latents, scale = FAMILIES[family]
    dit = {"in_channels": 64, "context_in_dim": 1536, "hidden_size": 1024, "mlp_ratio": 4.0, "num_heads": 16, "depth": depth,
           "depth_single_blocks": single, "axes_dim": [64], "theta": 10000, "qkv_bias": True}
    if variant:
        dit["guidance_embed"] = True
    turbo = variant == "turbo"
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": dit},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": vae_params(latents, scale)},
        "conditioner": {"target": "hy3dgen.shapegen.models.SingleImageEncoder",
                        "params": {"main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {"config": DINO_GIANT, "image_size": 518}}}},
        "scheduler": {"target": "hy3dgen.shapegen.schedulers."
                      + ("ConsistencyFlowMatchEulerDiscreteScheduler" if turbo else "FlowMatchEulerDiscreteScheduler"),
                      "params": {"num_train_timesteps": 1000, **({"pcm_timesteps": 100} if turbo else {})}},
        "image_processor": {"target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2", "params": {"size": 512, "border_ratio": 0.15}},
        "pipeline": {"target": "hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


def shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


# Weights of this scale make the geometry decoder's random field vary from point to point enough
# to cross zero, so the run has a (noise) surface to extract; at 0.02 the field keeps one sign.
SPATIAL_KEYS = {"geo_decoder.query_proj.weight": 1.0}


def write_random_safetensors(path: Path, tensor_shapes: dict[str, tuple[int, ...]], seed: int,
                             values: dict[str, torch.Tensor] | None = None) -> None:
    """float16 tensors (values: ``values[key]`` where given, else ``random_tensor``), written one at a time."""
    header, offset = {}, 0
    for key, shape in tensor_shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for key, shape in tensor_shapes.items():
            value = values[key] if values and key in values else random_tensor(key, shape, generator)
            f.write(value.to(torch.float16).numpy().tobytes())


def random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """The value of one tensor of a random checkpoint, by its key: norms and layer scales 1, biases 0, weights N(0, 0.02) (SPATIAL_KEYS: larger)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("scale", "lambda1") or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    std = next((value for name, value in SPATIAL_KEYS.items() if key.endswith(name)), 0.02)
    return torch.randn(shape, generator=generator) * std


def trained_like_field(parameters: dict[str, torch.Tensor], num_freqs: int, qk_norm: bool, generator: torch.Generator) -> None:
    """Fill a ShapeVAE's parameters (official names, in the module's order) so its occupancy field looks trained.

    Plain random weights give a noisy field of small logits, where coarse-to-fine decoding has to
    refine almost everything. Here matrices are N(0, 1 / fan_in), the Fourier features' weights
    fall off with frequency (a smooth surface), the output is scaled so logits reach tens away
    from the surface, and the decoder's cross-attention is sharpened, as in a trained occupancy
    decoder (FlashVDM's key selection relies on each point drawing on few tokens).
    """
    with torch.no_grad():
        for name, tensor in parameters.items():
            if tensor.ndim > 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor.shape[1] ** 0.5)
            elif "norm" in name or name.split(".")[-2].startswith("ln"):
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator) if name.endswith("weight")
                             else 0.1 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
        query = parameters["geo_decoder.query_proj.weight"]  # columns: xyz, then sin and cos of each coordinate's frequencies
        falloff = (0.25 ** torch.arange(num_freqs, dtype=torch.float32)).repeat(3).repeat(2)
        query[:, 3:] *= falloff
        query[:, :3] *= 3.0
        parameters["geo_decoder.output_proj.weight"] *= 30.0
        if qk_norm:
            for which in ("q_norm", "k_norm"):
                parameters[f"geo_decoder.cross_attn_decoder.attn.attention.{which}.weight"] *= 4.0


def trained_like_vae(config, seed: int, inside_share: float = 0.3) -> dict[str, torch.Tensor]:
    """The values of a ShapeVAE built from ``config`` (a ``ShapeVAEConfig``), drawn by ``trained_like_field``.

    The output bias is then shifted so about ``inside_share`` of the decoded box is inside for
    unit-variance latents (what a random DiT's sampler ends near).
    """
    from backend.pipelines.hunyuan3d_v2.vae import ShapeVAE

    generator = torch.Generator().manual_seed(seed)
    vae = ShapeVAE(config).eval()
    trained_like_field(dict(vae.named_parameters()), config.num_freqs, config.qk_norm, generator)
    latents = torch.randn(1, config.num_latents, config.embed_dim, generator=generator)
    points = torch.rand(1, 20_000, 3, generator=generator) * 2.02 - 1.01
    with torch.inference_mode():
        decoder = vae.geo_decoder
        logits = decoder(points, decoder.prepare(vae.latents_to_tokens(latents)))[0]
        decoder.output_proj.bias -= torch.quantile(logits, 1.0 - inside_share)
    return {key: tensor.detach() for key, tensor in vae.state_dict().items()}


def small_config(raw: dict) -> dict:
    """``raw`` shrunk to a few MB (DINOv2 and DiT 64 wide, one block of each kind, a 2-layer VAE 64 wide) for checks on a CPU; latents and picture size kept."""
    dino = {**raw["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"], "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4}
    small = copy.deepcopy(raw)
    small["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"] = dino
    small["model"]["params"] |= {"context_in_dim": 64, "hidden_size": 64, "num_heads": 4, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16]}
    small["vae"]["params"] |= {"width": 64, "heads": 4, "num_decoder_layers": 2}
    return small


FIELDS = ("trained", "noise")


def write_weights(model: str, out: Path, seed: int = 0, small: bool = False, field: str = "trained") -> None:
    """``out/<folder>`` (and the turbo VAE folder of ``-turbo`` models) with random weights, the released sizes unless ``small``.

    ``field``: 'trained' draws the VAE with ``trained_like_vae``, 'noise' as every other part.
    """
    from backend.pipelines.hunyuan3d_v2.vae import ShapeVAE, ShapeVAEConfig

    raw = released_config(model)
    if small:
        raw = small_config(raw)
    dit_folder, vae_folder = HUNYUAN3D_2_MODELS[model]
    folder = out / dit_folder.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = parse_config(raw, folder / "config.yaml")
    vae_config = ShapeVAEConfig.from_params(config.vae)
    with torch.device("meta"):
        vae = ShapeVAE(vae_config)
        parts = {**shapes(ImageConditioner(config.conditioner), "conditioner."), **shapes(Hunyuan3DDiT(config.dit), "model."),
                 **shapes(vae, "vae.")}
    vae_values = {"vae." + key: value for key, value in trained_like_vae(vae_config, seed).items()} if field == "trained" else None
    write_random_safetensors(folder / "model.fp16.safetensors", parts, seed, vae_values)
    print(f"wrote {folder} ({(folder / 'model.fp16.safetensors').stat().st_size / 1e9:.2f} GB, {len(parts)} tensors)")
    if model.endswith("-turbo"):
        vae_root = out / vae_folder.folder
        vae_root.mkdir(parents=True, exist_ok=True)
        (vae_root / "config.yaml").write_text(yaml.safe_dump(raw["vae"], sort_keys=False))
        turbo_values = trained_like_vae(vae_config, seed + 1) if field == "trained" else None
        write_random_safetensors(vae_root / "model.fp16.safetensors", shapes(vae, ""), seed + 1, turbo_values)
        print(f"wrote {vae_root} ({(vae_root / 'model.fp16.safetensors').stat().st_size / 1e9:.2f} GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=[m for m in HUNYUAN3D_2_MODELS if not m.startswith("hunyuan3d-2mv")])
    parser.add_argument("out", type=Path, help="the weights folder to write into (use it as --weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a few-MB model of the same layout (for checks on a CPU), not the released sizes")
    parser.add_argument("--field", choices=FIELDS, default="trained",
                        help="the VAE's values: 'trained' (default) decodes to a smooth surface, 'noise' to a noise field")
    args = parser.parse_args()
    write_weights(args.model, args.out, args.seed, args.small, args.field)


if __name__ == "__main__":
    main()
