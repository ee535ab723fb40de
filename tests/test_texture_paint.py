"""Hunyuan3D-2 Paint's delighting and multiview paint models against the official code (hy3dgen 2.0.2).

The tiny folders of ``paint_fixtures`` are loaded twice: into the official classes (diffusers'
InstructPix2Pix pipeline behind ``Light_Shadow_Remover``; ``UNet2p5DConditionModel``, whose
loader reads the released ``unet/diffusion_pytorch_model.bin`` strictly, behind
``HunyuanPaintPipeline``) and into ours through the backend's loading code. Same inputs, same
seeds, float32 on the CPU: UNet outputs, the latents after every sampler step and the final
pictures are compared element-wise. hy3dgen 2.0.2 has no turbo paint; the turbo parts are
checked against facts (timesteps, masks) and for running on the same folders.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hy3dgen_oracle import texgen_module
from paint_fixtures import write_paint_folder, write_tiny_paint_weights
from PIL import Image

from backend.errors import BackendError
from backend.memory import MemoryManager
from backend.memory.loading import WeightsError
from backend.pipelines.base import JobCancelled, JobContext
from backend.pipelines.hunyuan3d_v1.components import load_diffusers_model, load_transformers_model
from backend.texture.paint import DELIGHT_SEED, PAINT_SEED, delight, paint_views, register_paint_parts
from backend.texture.paint.loading import load_paint_unet
from backend.texture.paint.sampling import (
    _condition_pixels,
    _pixels,
    _prepare_delight_input,
    _reference_pixels,
    decode_latents,
    encode_delight_inputs,
    encode_views,
    load_scheduler,
    sample_delight,
    sample_views,
    turbo_timesteps,
)
from backend.texture.paint.unet import camera_index, multiview_masks
from backend.texture.views import OrthoView, official_views
from backend.weights import HUNYUAN3D_2_DELIGHT, HUNYUAN3D_2_PAINT, HUNYUAN3D_2_PAINT_TURBO, check_folder

# Upstream's camera indices of the official six views, computed by its formula in pipelines.py.
OFFICIAL_CAMERAS = [21, 12, 15, 18, 43, 37]
TWO_VIEWS = [OrthoView(0, 0), OrthoView(180, 0)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paint-weights")
    folders = write_tiny_paint_weights(root)
    folders["turbo"] = write_paint_folder(root, turbo=True)
    return folders


def job(events: list | None = None, cancel_after: int | None = None) -> JobContext:
    sink = [] if events is None else events

    def cancelled() -> bool:
        return cancel_after is not None and sum(e.get("step") or 0 for e in sink if e.get("step")) >= cancel_after

    return JobContext(sink.append, cancelled, SimpleNamespace(memory=MemoryManager()))


def picture(size: int = 384, alpha: bool = True, seed: int = 0) -> Image.Image:
    """A smooth random picture (an object on transparency when ``alpha``)."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    if not alpha:
        return Image.fromarray(rgb)
    y, x = np.mgrid[:size, :size] / size - 0.5
    a = ((x ** 2 + y ** 2) < 0.16).astype(np.uint8) * 255
    return Image.fromarray(np.dstack([rgb, a]), "RGBA")


def condition_maps(count: int, seed: int = 1) -> tuple[list[Image.Image], list[Image.Image]]:
    """Normal and position images as the renderer makes them: colour on a disc, white elsewhere."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[:512, :512] / 512 - 0.5
    inside = (x ** 2 + y ** 2) < 0.12
    maps = []
    for _ in range(2 * count):
        colour = np.asarray(Image.fromarray(generator.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((512, 512)))
        maps.append(Image.fromarray(np.where(inside[..., None], colour, 255).astype(np.uint8)))
    return maps[:count], maps[count:]


# -- the weight folders ----------------------------------------------------------------------------

def test_tiny_folders_pass_the_release_checks(weights):
    for folder, path in ((HUNYUAN3D_2_DELIGHT, weights["delight"]), (HUNYUAN3D_2_PAINT, weights["paint"]),
                         (HUNYUAN3D_2_PAINT_TURBO, weights["turbo"])):
        check = check_folder(folder, str(path.parent))
        assert check.ready and check.path == path, (check.missing, check.corrupt)
    # Both weight formats of the release are exercised: .bin UNet and safetensors VAE, and the other way round for turbo.
    assert (weights["paint"] / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert (weights["turbo"] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (weights["turbo"] / "vae" / "diffusion_pytorch_model.bin").is_file()


def test_a_paint_unet_with_a_missing_tensor_is_refused_by_name(weights, tmp_path):
    state = torch.load(weights["paint"] / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    dropped = next(key for key in state if "attn_multiview" in key)
    del state[dropped]
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_bytes((weights["paint"] / "unet" / "config.json").read_bytes())
    torch.save(state, tmp_path / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="attn_multiview"):
        load_paint_unet(tmp_path / "unet")


def test_register_refuses_a_paint_folder_of_the_other_kind(weights):
    with pytest.raises(BackendError, match="turbo"):
        register_paint_parts(MemoryManager(), weights["delight"], weights["paint"], turbo=True)


# -- the 2.5D UNet ---------------------------------------------------------------------------------

def test_camera_indices_follow_the_official_encoding():
    assert [camera_index(view.azimuth, view.elevation) for view in official_views()] == OFFICIAL_CAMERAS
    with pytest.raises(ValueError, match="elevations"):
        camera_index(0, 45)


def test_paint_unet_matches_the_official_unet(weights):
    modules = texgen_module("hunyuanpaint.unet.modules")
    official = modules.UNet2p5DConditionModel.from_pretrained(str(weights["paint"] / "unet")).eval()
    ours = load_paint_unet(weights["paint"] / "unet")
    generator = torch.Generator().manual_seed(0)
    views, size = 3, 16
    latents, normals, positions = (torch.randn(2, views, 4, size, size, generator=generator) for _ in range(3))
    reference = torch.randn(1, 1, 4, size, size, generator=generator)
    cameras = torch.tensor([OFFICIAL_CAMERAS[:views]] * 2)
    text = torch.cat([torch.zeros(1, 77, 1024), official.unet.learned_text_clip_gen.detach()])
    timestep = torch.tensor(517.0)
    with torch.no_grad():
        expected = official(latents, timestep, text, camera_info_gen=cameras, camera_info_ref=torch.zeros(2, 1, dtype=torch.long),
                            ref_latents=torch.cat([torch.zeros_like(reference), reference]), normal_imgs=normals,
                            position_imgs=positions, ref_scale=torch.tensor([0.0, 1.0]))[0]
        recorded = ours.record_reference(reference, torch.zeros(1, 1, dtype=torch.long))
        got = ours(latents, timestep, text, normals, positions, cameras, recorded, slice(1, 2))
    assert got.shape == (2 * views, 4, size, size)
    assert expected.abs().mean() > 0.1
    assert (got - expected).abs().max() < 1e-4


# -- delighting ------------------------------------------------------------------------------------

def official_delighter(folder: Path):
    """hy3dgen's Light_Shadow_Remover on the CPU in float32 (its constructor hard-codes float16 and CUDA)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    remover_class = texgen_module("utils.dehighlight_utils").Light_Shadow_Remover
    remover = remover_class.__new__(remover_class)
    remover.device, remover.cfg_image, remover.cfg_text = "cpu", 1.5, 1.0
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(folder), dtype=torch.float32, safety_checker=None)
    pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    remover.pipeline = pipeline
    return remover


@pytest.mark.parametrize(("guidance", "image_guidance"), [(1.0, 1.5), (2.0, 1.5)])
def test_delight_sampler_matches_the_official_pipeline_after_every_step(weights, guidance, image_guidance):
    from transformers import CLIPTokenizer

    folder, steps = weights["delight"], 2
    official = official_delighter(folder).pipeline
    model_input, _, _ = _prepare_delight_input(picture())
    expected_steps = []
    expected = official(prompt="", image=model_input, generator=torch.manual_seed(DELIGHT_SEED), height=512, width=512,
                        num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=guidance, output_type="np",
                        callback_on_step_end=lambda _p, _i, _t, tensors: expected_steps.append(tensors["latents"].clone()) or {}).images

    unet = load_diffusers_model("UNet2DConditionModel", folder / "unet")
    vae = load_diffusers_model("AutoencoderKL", folder / "vae")
    text_encoder = load_transformers_model("CLIPTextModel", folder / "text_encoder")
    tokens = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))([""], padding="max_length", max_length=77, return_tensors="pt")
    pixels = _pixels(model_input, layout="diffusers")
    guided = guidance > 1.0
    text, image_latents = encode_delight_inputs(text_encoder, vae, tokens.input_ids, tokens.attention_mask, pixels, guided=guided)
    got_steps = []
    latents = sample_delight(unet, load_scheduler(folder, "delight"), text, image_latents, seed=DELIGHT_SEED, steps=steps,
                             guidance=guidance, image_guidance=image_guidance, on_step=lambda _s, lat: got_steps.append(lat.clone()))
    assert len(got_steps) == len(expected_steps) == steps
    for got, want in zip(got_steps, expected_steps):
        assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())
    decoded = decode_latents(vae, latents).permute(0, 2, 3, 1).numpy()
    assert np.abs(decoded - expected).max() <= 1e-3


def test_delight_matches_the_official_light_shadow_remover(weights):
    steps = 2
    remover = official_delighter(weights["delight"])
    pipeline = remover.pipeline
    # The remover asks for 50 steps; the comparison runs 2 (every other argument as upstream passes it).
    remover.pipeline = lambda **kwargs: pipeline(**{**kwargs, "num_inference_steps": steps})
    source = picture()
    expected = np.asarray(remover(source), dtype=np.int16)
    events: list = []
    ctx = job(events)
    names = register_paint_parts(ctx.memory, weights["delight"], weights["paint"], turbo=False)
    got = delight(ctx, names["delight"], source, seed=DELIGHT_SEED, steps=steps, guidance=1.0, image_guidance=1.5)
    assert got.size == (512, 512) and got.mode == "RGB"
    difference = np.abs(np.asarray(got, dtype=np.int16) - expected)
    # Upstream truncates to 8 bits: identical up to values that sit on a level boundary.
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    assert [e["step"] for e in events if e["stage"] == "delight" and e["step"] is not None] == list(range(steps + 1))


def test_a_folder_of_links_to_blobs_works_as_in_the_hugging_face_cache(weights, tmp_path):
    """The cache's snapshot folders hold links to content-named blobs elsewhere; the sampler config and tokenizer are still found."""
    import shutil

    snapshot, blobs = tmp_path / "snapshots" / "0123" / weights["delight"].name, tmp_path / "blobs"
    blobs.mkdir()
    for index, file in enumerate(sorted(f for f in weights["delight"].rglob("*") if f.is_file())):
        shutil.copyfile(file, blobs / f"blob{index}")
        (snapshot / file.relative_to(weights["delight"])).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / file.relative_to(weights["delight"])).symlink_to(blobs / f"blob{index}")
    ctx = job()
    names = register_paint_parts(ctx.memory, snapshot, weights["paint"], turbo=False)
    assert delight(ctx, names["delight"], picture(), seed=0, steps=1, guidance=1.0, image_guidance=1.5).size == (512, 512)


def test_a_fully_transparent_picture_is_refused(weights):
    ctx = job()
    names = register_paint_parts(ctx.memory, weights["delight"], weights["paint"], turbo=False)
    empty = Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    with pytest.raises(BackendError, match="fully transparent"):
        delight(ctx, names["delight"], empty, seed=0, steps=1, guidance=1.0, image_guidance=1.5)


# -- multiview paint -------------------------------------------------------------------------------

def official_painter(folder: Path):
    """hy3dgen's HunyuanPaintPipeline on the CPU in float32, with the sampler Multiview_Diffusion_Net swaps in."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler

    pipeline_module = texgen_module("hunyuanpaint.pipeline")
    unet = pipeline_module.UNet2p5DConditionModel.from_pretrained(str(folder / "unet")).eval()
    scheduler = EulerAncestralDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
    pipeline = pipeline_module.HunyuanPaintPipeline(
        vae=AutoencoderKL.from_pretrained(str(folder / "vae")).eval(), text_encoder=None, tokenizer=None, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(scheduler.config, timestep_spacing="trailing"), feature_extractor=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_paint_matches_the_official_pipeline_after_every_step_and_in_the_views(weights):
    folder, steps, views = weights["paint"], 2, TWO_VIEWS
    normals, positions = condition_maps(len(views))
    reference = picture(512, alpha=True, seed=3)
    normal_pixels, position_pixels = _condition_pixels(normals)[None], _condition_pixels(positions)[None]
    cameras = [[camera_index(v.azimuth, v.elevation) for v in views]]

    official = official_painter(folder)
    expected_steps: list = []
    torch.manual_seed(PAINT_SEED)  # upstream's seed_everything: the VAE posteriors draw from the global generator
    expected = official(reference, num_inference_steps=steps, generator=torch.Generator().manual_seed(PAINT_SEED), width=512,
                        height=512, num_in_batch=len(views), camera_info_gen=cameras, camera_info_ref=[[0]],
                        normal_imgs=normal_pixels.clone(), position_imgs=position_pixels.clone(), output_type="np",
                        callback_on_step_end=lambda _p, _i, _t, tensors: expected_steps.append(tensors["latents"].clone()) or {}).images

    unet, vae = load_paint_unet(folder / "unet"), load_diffusers_model("AutoencoderKL", folder / "vae")
    reference_latents, normal_latents, position_latents = encode_views(vae, _reference_pixels(reference), normal_pixels[0],
                                                                       position_pixels[0], seed=PAINT_SEED)
    got_steps: list = []
    latents = sample_views(unet, load_scheduler(folder, "paint"), reference_latents, normal_latents, position_latents,
                           torch.tensor(cameras), seed=PAINT_SEED, steps=steps, guidance=2.0,
                           on_step=lambda _s, lat: got_steps.append(lat.clone()))
    assert len(got_steps) == len(expected_steps) == steps
    for got, want in zip(got_steps, expected_steps):
        assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())
    decoded = decode_latents(vae, latents).permute(0, 2, 3, 1).numpy()
    assert decoded.shape == expected.shape == (len(views), 512, 512, 3)
    assert np.abs(decoded - expected).max() <= 1e-3

    events: list = []
    ctx = job(events)
    names = register_paint_parts(ctx.memory, weights["delight"], folder, turbo=False)
    pictures = paint_views(ctx, names["paint"], reference, normals, positions, seed=PAINT_SEED, steps=steps, guidance=2.0,
                           turbo=False, views=views)
    as_bytes = np.stack([np.asarray(p, dtype=np.int16) for p in pictures])
    assert np.abs(as_bytes - np.round(expected * 255)).max() <= 1
    assert [e["step"] for e in events if e["stage"] == "paint" and e["step"] is not None] == list(range(steps + 1))


def test_paint_needs_one_normal_and_one_position_image_per_view(weights):
    ctx = job()
    names = register_paint_parts(ctx.memory, weights["delight"], weights["paint"], turbo=False)
    normals, positions = condition_maps(6)
    with pytest.raises(BackendError, match="one normal and one position image per view"):
        paint_views(ctx, names["paint"], picture(), normals[:5], positions, seed=0, steps=1, guidance=2.0, turbo=False)
    with pytest.raises(BackendError, match="cannot paint"):
        paint_views(ctx, names["paint"], picture(), normals[:1], positions[:1], seed=0, steps=1, guidance=2.0, turbo=False,
                    views=[OrthoView(45, 0)])
    with pytest.raises(BackendError, match="does not fit the paint model"):
        paint_views(ctx, names["paint"], picture(), normals, positions, seed=0, steps=1, guidance=2.0, turbo=True)


def test_cancel_stops_between_steps(weights):
    events: list = []
    ctx = job(events, cancel_after=1)
    names = register_paint_parts(ctx.memory, weights["delight"], weights["paint"], turbo=False)
    with pytest.raises(JobCancelled):
        delight(ctx, names["delight"], picture(), seed=0, steps=5, guidance=1.0, image_guidance=1.5)
    assert max(e["step"] for e in events if e["stage"] == "delight" and e["step"] is not None) == 1


# -- turbo -----------------------------------------------------------------------------------------

def test_turbo_timesteps_are_every_third_of_the_distilled_grid(weights):
    scheduler = load_scheduler(weights["turbo"], "turbo")
    assert turbo_timesteps(scheduler, 10) == [989, 890, 791, 692, 593, 494, 395, 296, 197, 98]
    assert turbo_timesteps(scheduler, 5) == [989, 791, 593, 395, 197]
    with pytest.raises(BackendError, match="1 to 30"):
        turbo_timesteps(scheduler, 31)


def test_turbo_masks_join_tokens_that_see_nearby_surface_points():
    positions = torch.ones(1, 2, 3, 64, 64)  # white: no surface
    positions[0, 0, :, :32, :32] = torch.tensor([0.2, 0.3, 0.4]).view(3, 1, 1)  # view 0, top-left quarter
    positions[0, 1, :, 32:, 32:] = torch.tensor([0.2, 0.3, 0.4]).view(3, 1, 1)  # view 1 sees the same point
    positions[0, 1, :, :32, :32] = torch.tensor([0.9, 0.9, 0.1]).view(3, 1, 1)  # and a far one
    masks = multiview_masks(positions, grids=(8, 4))
    assert set(masks) == {2 * 64, 2 * 16}
    mask = masks[2 * 16][0]  # 4x4 cells per view
    near_0, near_1, far_1, empty_0 = 0, 16 + 15, 16 + 0, 15
    assert mask[near_0, near_1] and mask[near_1, near_0]
    assert not mask[near_0, far_1]
    assert mask[empty_0, empty_0] and not mask[empty_0, near_0]  # uncovered cells sit at the origin


def test_turbo_paint_runs_on_the_turbo_folder_and_its_masks_matter(weights):
    folder = weights["turbo"]
    normals, positions = condition_maps(len(TWO_VIEWS))
    reference = picture()
    events: list = []
    ctx = job(events)
    names = register_paint_parts(ctx.memory, weights["delight"], folder, turbo=True)
    pictures = paint_views(ctx, names["paint"], reference, normals, positions, seed=0, steps=2, guidance=2.0, turbo=True,
                           views=TWO_VIEWS)
    assert len(pictures) == 2 and pictures[0].size == (512, 512)
    assert [e["step"] for e in events if e["stage"] == "paint" and e["step"] is not None] == [0, 1, 2]

    # The same sampler by hand without the masks paints other views.
    unet, vae = load_paint_unet(folder / "unet"), load_diffusers_model("AutoencoderKL", folder / "vae")
    latents = encode_views(vae, _reference_pixels(reference), _condition_pixels(normals), _condition_pixels(positions), seed=0)
    cameras = torch.tensor([[camera_index(v.azimuth, v.elevation) for v in TWO_VIEWS]])
    unmasked = decode_latents(vae, sample_views(unet, load_scheduler(folder, "turbo"), *latents, cameras, seed=0, steps=2,
                                                guidance=1.0, on_step=lambda *_: None, masks={}))
    public = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1) for p in pictures])
    assert (public - unmasked).abs().max() > 1e-2


def test_a_full_size_paint_unet_has_the_official_tensors():
    """Stable Diffusion 2's UNet config (the release's architecture), built on ``meta``: ours and the official have the same tensors."""
    from diffusers import UNet2DConditionModel

    from backend.memory.loading import parameters_on_meta
    from backend.texture.paint.unet import MultiviewUNet

    config = {"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
              "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
              "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "in_channels": 4, "out_channels": 4,
              "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 64, "use_linear_projection": True}
    official_class = texgen_module("hunyuanpaint.unet.modules").UNet2p5DConditionModel
    with torch.device("meta"):
        official = official_class(UNet2DConditionModel(**config))
    with parameters_on_meta():
        ours = MultiviewUNet(config)
    expected = {key: tuple(t.shape) for key, t in official.state_dict().items()}
    got = {key: tuple(t.shape) for key, t in ours.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in ours.parameters()) > 1.5e9
