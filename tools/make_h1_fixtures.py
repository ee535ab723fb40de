"""Golden data for tests/test_h1_reference.py, made by the official Hunyuan3D-1 code.

Give it a checkout of the public Hunyuan3D-1 repository (github.com/Tencent/Hunyuan3D-1). With
that code it builds tiny random versions of SVRM and of the lite and std multiview pipelines on
the CPU in float32, saves their weights in the official layouts (``svrm.safetensors``, the
diffusers folders ``mvd_lite/`` and ``mvd_std/``) and runs them on fixed inputs, recording the
output at every boundary:

- SVRM: the input tensors and cameras, the encoder's tokens, the triplane, the coordinates the
  triplane is sampled at, SDF and colour at fixed points, the SDF on a 24^3 grid;
- multiview: the latents after each denoising step, the decoded grid before rounding (at fixed
  pixels) and the six views as the official code splits and orders them.

The official code imports more than the backend needs; install it into the environment that
runs this script only (not a requirement of the backend):
  pip install einops omegaconf "opencv-python-headless<4.11" matplotlib "libigl<2.6" jaxtyping typeguard
(opencv 4.11+ wants numpy 2, which the Blender wheel refuses; libigl 2.6 renamed functions SVRM
imports.) torchvision is replaced by
a stand-in for the transforms SVRM's predictor uses, because the pinned CPU torch has no
matching torchvision build, and the predictor's turntable renderer (pytorch3d) by an empty
module, as it is never called; the SVRM inputs are given at the model's input size, so the
predictor's resize does nothing either way. Nothing from the checkout is copied into the output.

Run from the repository root:  python tools/make_h1_fixtures.py /path/to/Hunyuan3D-1
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "h1_reference"
sys.path.insert(0, str(ROOT))

from backend.pipelines.hunyuan3d_v1.svrm import EncoderConfig, SVRMConfig, SynthesizerConfig, TriplaneTransformerConfig  # noqa: E402
from backend.pipelines.hunyuan3d_v1.svrm.loading import CONFIG_METADATA_KEY, config_to_json  # noqa: E402

# The official model's structure at a few kilobytes. The reference fixes some sizes in code:
# the feed-forward multiplier (4), the synthesizer's hidden width (64), the upsampling (4).
SVRM_TINY = SVRMConfig(
    encoder=EncoderConfig(width=32, depth=2, heads=2, mlp_ratio=4, patch_size=14, pos_embed_grid=5),
    transformer=TriplaneTransformerConfig(plane_tokens=6, width=32, depth=2, heads=2, head_dim=16, ff_mult=4,
                                          context_dim=32, channels=8, upsample=4),
    synthesizer=SynthesizerConfig(channels=8, hidden=64),
    image_size=56,  # 4 x 4 patches: the 5 x 5 positional grid is resampled, as 37 -> 36 is upstream
)
GRID_RESOLUTION = 24
QUERY_POINTS = 4096
TEXT_TOKENS = 77
# Upstream's std pipeline checks that the pooled embedding is 1280 wide.
STD_POOLED = 1280
STEPS = 2
SEED = 0
# Pixels of each decoded grid kept as golden values (the whole grid would be megabytes of noise).
GOLDEN_PIXELS = 8000


def import_reference(checkout: Path) -> None:
    """Make the checkout importable without running its heavy package initialisers."""
    if not (checkout / "svrm" / "ldm" / "models" / "svrm.py").is_file() or not (checkout / "mvd").is_dir():
        sys.exit(f"error: {checkout} is not a checkout of Tencent/Hunyuan3D-1 (no svrm/ldm or mvd folder)")
    sys.path.insert(0, str(checkout))
    # infer/__init__.py imports background removal, text-to-image and the mesh stage; only
    # infer.utils and infer.image_to_views are needed, so the package is registered empty.
    infer = types.ModuleType("infer")
    infer.__path__ = [str(checkout / "infer")]
    sys.modules["infer"] = infer
    # SVRM's predictor imports its turntable renderer, which needs pytorch3d; it is never called here.
    vis_util = types.ModuleType("svrm.ldm.vis_util")
    vis_util.render_func = None
    sys.modules["svrm.ldm.vis_util"] = vis_util


def _torchvision_stand_in() -> types.ModuleType:
    """``transforms.Compose/Resize/ToTensor/Normalize`` as SVRM's predictor uses them, for inputs already at size."""

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, value):
            for step in self.steps:
                value = step(value)
            return value

    class Resize:
        def __init__(self, size, interpolation=None):
            self.size = size

        def __call__(self, image):
            if min(image.size) != self.size:
                raise ValueError(f"the stand-in Resize only accepts pictures already at {self.size} pixels")
            return image

    class ToTensor:
        def __call__(self, image):
            return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

        def __call__(self, tensor):
            return tensor.sub(self.mean).div(self.std)

    module = types.ModuleType("torchvision")
    module.transforms = types.SimpleNamespace(Compose=Compose, Resize=Resize, ToTensor=ToTensor, Normalize=Normalize)
    return module


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (the official initialisers zero the camera modulation and biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            values = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() >= 2:
                fan_in = parameter[0].numel() if not name.endswith(("pos_embed", "pos_emb", "cls_token")) else 1
                parameter.copy_(values / fan_in**0.5)
            elif name.endswith(("gamma", "weight", "_inv_std")):  # layer scales and norms: around one
                parameter.copy_(1 + 0.1 * values)
            else:
                parameter.copy_(0.1 * values)


def picture(size: int, seed: int, alpha: bool = False) -> Image.Image:
    """A few overlapping soft-edged discs of random colours on white (on transparency with ``alpha``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    rgb = np.ones((size, size, 3))
    coverage = np.zeros((size, size))
    for _ in range(4):
        centre, radius, colour = rng.uniform(0.3, 0.7, 2), rng.uniform(0.12, 0.25), rng.uniform(0, 1, 3)
        disc = np.clip((radius - np.hypot(yy - centre[0], xx - centre[1])) * size / 2, 0, 1)[..., None]
        rgb = rgb * (1 - disc) + colour * disc
        coverage = np.maximum(coverage, disc[..., 0])
    pixels = np.round(rgb * 255).astype(np.uint8)
    if not alpha:
        return Image.fromarray(pixels)
    return Image.fromarray(np.dstack([pixels, np.round(coverage * 255).astype(np.uint8)]), "RGBA")


# -- SVRM ------------------------------------------------------------------------------------------

def reference_svrm(config: SVRMConfig) -> torch.nn.Module:
    """The official encoder, transformer and synthesizer at ``config``'s sizes, under the official names."""
    from functools import partial

    from svrm.ldm.modules.encoders import dinov2_mod
    from svrm.ldm.modules.encoders.dinov2.layers import MemEffAttention
    from svrm.ldm.modules.encoders.dinov2.layers import NestedTensorBlockMod as BlockMod
    from svrm.ldm.modules.encoders.dinov2.models.vision_transformer import DinoVisionTransformer
    from svrm.ldm.util import instantiate_from_config

    encoder, transformer = config.encoder, config.transformer

    def tiny_vit(pretrained: bool = False) -> torch.nn.Module:
        # The settings the official dinov2_vitb14 builder passes, at this width and depth.
        return DinoVisionTransformer(
            img_size=encoder.patch_size * encoder.pos_embed_grid, patch_size=encoder.patch_size, embed_dim=encoder.width,
            depth=encoder.depth, num_heads=encoder.heads, mlp_ratio=encoder.mlp_ratio, init_values=1.0, ffn_layer="mlp",
            block_chunks=0, num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
            block_fn=partial(BlockMod, attn_class=MemEffAttention), pos_emb_dim=encoder.width, cam_cond_dim=encoder.camera_dim,
        )

    dinov2_mod.dinov2_vitb14 = tiny_vit
    model = torch.nn.Module()
    model.img_encoder = instantiate_from_config({"target": "svrm.ldm.modules.encoders.dinov2_mod.FrozenDinoV2ImageEmbedder",
                                                 "params": {"version": "dinov2_vitb14"}})
    model.img_to_triplane_decoder = instantiate_from_config({
        "target": "svrm.ldm.modules.translator.img_to_triplane.ImgToTriplaneModel",
        "params": {"pos_emb_size": transformer.plane_tokens, "pos_emb_dim": transformer.width, "cam_cond_dim": encoder.camera_dim,
                   "n_heads": transformer.heads, "d_head": transformer.head_dim, "depth": transformer.depth,
                   "context_dim": transformer.context_dim, "triplane_dim": transformer.channels, "use_fp16": False,
                   "use_bf16": False, "upsample_time": 2}})
    model.render = instantiate_from_config({"target": "svrm.ldm.modules.rendering_neus.synthesizer.TriplaneSynthesizer",
                                            "params": {"triplane_dim": transformer.channels, "samples_per_ray": 128}})
    randomize(model, seed=19)
    # Stored in float16 like the released file, computed in float32 from the same rounded values.
    return model.half().float().eval()


def make_svrm(out: Path) -> None:
    from safetensors.torch import save_file

    # Only while the predictor is imported: diffusers and transformers must not see the stand-in.
    sys.modules["torchvision"] = _torchvision_stand_in()
    try:
        from svrm.predictor import MV23DPredictor, transforms
    finally:
        del sys.modules["torchvision"]

    model = reference_svrm(SVRM_TINY)
    (out / "svrm").mkdir(parents=True, exist_ok=True)
    state = {key: value.half().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(out / "svrm" / "svrm.safetensors"),
              metadata={"format": "pt", CONFIG_METADATA_KEY: config_to_json(SVRM_TINY)})

    size = SVRM_TINY.image_size
    pictures = [picture(size, seed) for seed in range(7)]  # six views (azimuth 0..300), then the condition image
    for index, image in enumerate(pictures):
        image.save(out / f"svrm_input_{index}.png")

    # The predictor's own preprocessing and cameras, without its constructor (which loads the
    # released file from a fixed path onto cuda:0).
    predictor = MV23DPredictor.__new__(MV23DPredictor)
    predictor.device, predictor.model = "cpu", model
    predictor.elevation_list, predictor.azimuth_list = [0] * 7, [0, 60, 120, 180, 240, 300, 0]
    predictor.input_view_transform = transforms.Compose([transforms.Resize(size, interpolation=Image.BICUBIC), transforms.ToTensor()])
    predictor.final_input_view_transform = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = predictor.load_data(pictures)

    # The steps of SVRMModel.export_mesh_with_uv up to the SDF grid, in float32 (it casts to float16).
    from einops import rearrange

    images, cameras = data["input_view"], data["input_view_cam"]
    views = images.shape[1]
    sample_coordinates = []
    real_grid_sample = torch.nn.functional.grid_sample

    def recording_grid_sample(input, grid, *args, **kwargs):
        sample_coordinates.append(grid.detach().clone())
        return real_grid_sample(input, grid, *args, **kwargs)

    generator = torch.Generator().manual_seed(7)
    # Mostly inside the box, some outside it, and the corners and centre.
    points = (torch.rand(1, QUERY_POINTS, 3, generator=generator) * 1.4 - 0.7)
    points[0, :9] = torch.tensor([[x, y, z] for x in (-0.6, 0.6) for y in (-0.6, 0.6) for z in (-0.6, 0.6)] + [[0.0, 0.0, 0.0]])
    with torch.no_grad():
        tokens = model.img_encoder(rearrange(images, "b m c h w -> (b m) c h w"), rearrange(cameras, "b m d -> (b m) d"))
        tokens = rearrange(tokens, "(b m) l d -> b (l m) d", m=views)
        triplane = model.img_to_triplane_decoder(tokens)
        torch.nn.functional.grid_sample = recording_grid_sample
        try:
            queried = model.render.forward_points(triplane, points)
        finally:
            torch.nn.functional.grid_sample = real_grid_sample
        aabb = torch.tensor([[-0.6, -0.6, -0.6], [0.6, 0.6, 0.6]]).unsqueeze(0)
        grid = model.render.forward_grid(planes=triplane, grid_size=GRID_RESOLUTION, aabb=aabb)
    np.savez_compressed(
        out / "svrm_golden.npz",
        images=images.numpy(), cameras=cameras.numpy(), tokens=tokens.numpy(), triplane=triplane.numpy(),
        points=points[0].numpy(),
        # The first grid_sample call of forward_points samples at the points themselves (the
        # others are the finite-difference normal's offsets).
        sample_coordinates=sample_coordinates[0].numpy(),
        sdf=queried["sdf"][0, :, 0].numpy(), rgb=queried["rgb"][0].numpy(),
        grid_sdf=grid["sdf"][0, ..., 0].numpy(),
    )


# -- multiview ------------------------------------------------------------------------------------

def tiny_unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    # Attention only at the coarsest of four levels, so the released latent grid sizes stay cheap
    # on a CPU. (diffusers reads attention_head_dim here as the number of heads.)
    return UNet2DConditionModel(
        in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=2, norm_num_groups=4, **extra,
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    # Four levels: a factor of 8, as released, so the grids have their released sizes.
    return AutoencoderKL(block_out_channels=(4, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                         mid_block_add_attention=False)


def tiny_vision(projection_dim: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                                          num_hidden_layers=2, image_size=32, patch_size=8,
                                                          projection_dim=projection_dim))


def processor(size: int, mean, std, resample: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=mean,
                              image_std=std, resample=resample)


def euler(prediction_type: str, spacing: str):
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           prediction_type=prediction_type, steps_offset=1, timestep_spacing=spacing)


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def ramp() -> list[float]:
    rng = np.random.default_rng(3)
    return [round(float(x), 6) for x in rng.uniform(0.0, 0.4, TEXT_TOKENS)]


def save_lite(folder: Path) -> None:
    from mvd.hunyuan3d_mvd_lite_pipeline import Hunyuan3d_MVD_Lite_Pipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_TOKENS)
    pipe = Hunyuan3d_MVD_Lite_Pipeline(
        vae=tiny_vae(), unet=tiny_unet(32),
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                                                  vocab_size=10, max_position_embeddings=TEXT_TOKENS, bos_token_id=0, eos_token_id=1,
                                                  pad_token_id=1)),
        tokenizer=tokenizer, scheduler=euler("v_prediction", "linspace"), vision_encoder=tiny_vision(32),
        feature_extractor_clip=processor(32, CLIP_MEAN, CLIP_STD, 3), feature_extractor_vae=processor(64, [0.5] * 3, [0.8] * 3, 2),
        ramping_coefficients=ramp(),
    )
    pipe.to(torch.float16).save_pretrained(str(folder))  # float16, as released


def save_std(folder: Path) -> None:
    from mvd.hunyuan3d_mvd_std_pipeline import HunYuan3D_MVD_Std_Pipeline

    torch.manual_seed(1)
    pipe = HunYuan3D_MVD_Std_Pipeline(
        vae=tiny_vae(),
        unet=tiny_unet(32, addition_embed_type="text_time", addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=8 * 6 + STD_POOLED),
        scheduler=euler("epsilon", "trailing"), vision_encoder=tiny_vision(16), vision_encoder_2=tiny_vision(16),
        feature_extractor_vae=processor(64, [0.5] * 3, [0.5] * 3, 2), vision_processor=processor(32, CLIP_MEAN, CLIP_STD, 3),
        ramping_coefficients=ramp(),
    )
    pipe.uc_text_emb = torch.randn(1, TEXT_TOKENS, 32) * 0.5
    pipe.uc_text_emb_2 = torch.randn(1, STD_POOLED) * 0.5
    pipe.to(torch.float16).save_pretrained(str(folder))  # float16, as released; the two embeddings stay float32


def run_multiview(out: Path, variant: str, condition: Image.Image) -> None:
    """Run one official pipeline the way infer/image_to_views.py does, recording every step."""
    from infer.image_to_views import Image2Views

    lite = variant == "lite"
    folder = out / f"mvd_{variant}"
    (save_lite if lite else save_std)(folder)
    # The official wrapper (seeding, view order), holding a float32 copy of its pipeline.
    views_maker = Image2Views(device="cpu", use_lite=lite, save_memory=False, std_pretrain=str(out / "mvd_std"),
                              lite_pretrain=str(out / "mvd_lite"))
    pipe = type(views_maker.pipe).from_pretrained(str(folder), torch_dtype=torch.float32)
    views_maker.pipe = pipe

    latents_per_step, decoded = [], []
    real_step, real_decode = pipe.scheduler.step, pipe.vae.decode

    def recording_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        latents_per_step.append((result[0] if isinstance(result, tuple) else result.prev_sample).clone())
        return result

    def recording_decode(*args, **kwargs):
        result = real_decode(*args, **kwargs)
        decoded.append((result[0] if isinstance(result, tuple) else result.sample).clone())
        return result

    pipe.scheduler.step, pipe.vae.decode = recording_step, recording_decode
    grid, views = views_maker.call(condition.copy(), seed=SEED, steps=STEPS, guidance_scale=2.0)
    if lite:
        from mvd.hunyuan3d_mvd_lite_pipeline import unscale_image

        pixels = pipe.image_processor.postprocess(unscale_image(decoded[0]), output_type="pt")[0]
    else:
        from mvd.hunyuan3d_mvd_std_pipeline import unscale_image, unscale_image_2

        pixels = unscale_image(unscale_image_2(decoded[0])).clamp(0, 1)[0]
    pixels = pixels.permute(1, 2, 0).reshape(-1, 3)
    rng = np.random.default_rng(11)
    picked = np.sort(rng.choice(len(pixels), GOLDEN_PIXELS, replace=False))
    view_pixels = np.stack([np.asarray(view).reshape(-1, 3) for view in views[1:]])  # views[0] is the condition image
    picked_in_view = np.sort(rng.choice(view_pixels.shape[1], GOLDEN_PIXELS, replace=False))
    np.savez_compressed(
        out / f"mvd_{variant}_golden.npz",
        latents=torch.stack(latents_per_step).numpy(), grid_size=np.array(grid[0].size),
        pixel_index=picked, pixels=pixels[picked].numpy(),
        view_pixel_index=picked_in_view, view_pixels=view_pixels[:, picked_in_view],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/Tencent/Hunyuan3D-1")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write the fixtures (default: {DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    import_reference(args.checkout.resolve())
    torch.set_grad_enabled(False)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        make_svrm(args.out)
        condition = picture(64, seed=100, alpha=True)
        condition.save(args.out / "mvd_input.png")
        for variant in ("lite", "std"):
            run_multiview(args.out, variant, condition)
    except ModuleNotFoundError as exc:
        sys.exit(f"error: the official code needs {exc.name!r}, which is not installed here; see --help for the packages")
    (args.out / "README.md").write_text(
        "Golden data from the official Hunyuan3D-1 code: tiny random models, CPU, float32.\n"
        "Made by `python tools/make_h1_fixtures.py CHECKOUT`; checked by tests/test_h1_reference.py.\n")
    total = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
