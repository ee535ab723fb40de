"""Hunyuan3D-1 against golden data from the official code (tests/data/h1_reference).

``tools/make_h1_fixtures.py`` ran tiny random versions of the official SVRM and multiview
pipelines on the CPU in float32 and saved their weights in the released layouts, their inputs
and their outputs at every boundary. Here the same weights go through our loaders and the
memory manager, and every boundary must agree: tensors to 1e-4 of the output's scale (its
root mean square), pictures to 1e-3 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.memory import MemoryManager
from backend.mesh.grid import sample_grid
from backend.pipelines.base import JobContext
from backend.pipelines.hunyuan3d_v1.components import register_components
from backend.pipelines.hunyuan3d_v1.multiview import LiteMultiview, StdMultiview
from backend.pipelines.hunyuan3d_v1.svrm.loading import read_config
from backend.pipelines.hunyuan3d_v1.svrm.preprocess import prepare_inputs
from backend.pipelines.hunyuan3d_v1.svrm_pipeline import BOUND, COMPONENTS, register_svrm

DATA = Path(__file__).parent / "data" / "h1_reference"
SVRM_FILE = DATA / "svrm" / "svrm.safetensors"
TENSOR_TOLERANCE = 1e-4  # of the output's root mean square
PIXEL_TOLERANCE = 1e-3  # in [0, 1]
# What the fixtures were made with (tools/make_h1_fixtures.py).
SEED, STEPS = 0, 2
MULTIVIEW = {"lite": (LiteMultiview, 1.0), "std": (StdMultiview, 2.0)}  # lite's 1.0 is upstream's own schedule


def assert_matches(actual, expected, what: str, tolerance: float = TENSOR_TOLERANCE, scale: float | None = None) -> None:
    """Max abs diff within ``tolerance`` x ``scale`` (default: the reference's root mean square)."""
    actual = actual.detach().float().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, reference {expected.shape}"
    if scale is None:
        scale = float(np.sqrt(np.mean(expected.astype(np.float64) ** 2)))
    difference = float(np.abs(actual - expected).max())
    assert difference <= tolerance * scale, f"{what}: max abs diff {difference:.3g} is over {tolerance:g} x its scale {scale:.3g}"


# -- SVRM -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def svrm_golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "svrm_golden.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def svrm_stages():
    """``run(part, fn)``: ``fn`` gets the part loaded from the fixture's file by the memory manager (CPU, float32)."""
    memory = MemoryManager()
    register_svrm(memory, SVRM_FILE)

    def run(part: str, fn):
        def stage(modules):
            with torch.inference_mode():
                return fn(modules[COMPONENTS[part]])

        return memory.run_stage(part, [COMPONENTS[part]], stage)

    return run


def test_svrm_inputs_and_cameras_match_the_reference(svrm_golden):
    pictures = [Image.open(DATA / f"svrm_input_{index}.png") for index in range(7)]
    images, cameras = prepare_inputs(pictures[:6], pictures[6], read_config(SVRM_FILE).image_size)
    assert_matches(images, svrm_golden["images"], "normalised images")
    assert_matches(cameras, svrm_golden["cameras"], "cameras")


def test_svrm_encoder_and_triplane_match_the_reference(svrm_golden, svrm_stages):
    images, cameras = torch.from_numpy(svrm_golden["images"]), torch.from_numpy(svrm_golden["cameras"])
    tokens = svrm_stages("encoder", lambda encoder: encoder(images, cameras))
    assert_matches(tokens, svrm_golden["tokens"], "encoder tokens")
    triplane = svrm_stages("triplane", lambda transformer: transformer(torch.from_numpy(svrm_golden["tokens"])))
    assert_matches(triplane, svrm_golden["triplane"], "triplane")


def test_svrm_synthesizer_samples_where_the_reference_does(svrm_golden, svrm_stages, monkeypatch):
    triplane, points = torch.from_numpy(svrm_golden["triplane"]), torch.from_numpy(svrm_golden["points"])[None]
    sampled_at = []
    grid_sample = torch.nn.functional.grid_sample

    def recording_grid_sample(input, grid, *args, **kwargs):
        sampled_at.append(grid.clone())
        return grid_sample(input, grid, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", recording_grid_sample)
    sdf, rgb = svrm_stages("synthesizer", lambda synthesizer: synthesizer(triplane, points))
    # Scaling a point is one float32 multiplication, correctly rounded on every machine, so the
    # coordinates must be the reference's to the bit; a different but equal-looking expression
    # is one ulp off for a fifth of them, which a rough triplane turns into visible differences.
    np.testing.assert_array_equal(sampled_at[0].numpy(), svrm_golden["sample_coordinates"])
    assert_matches(sdf[0], svrm_golden["sdf"], "SDF at the points")
    assert_matches(rgb[0], svrm_golden["rgb"], "colour at the points")


def test_svrm_sdf_grid_matches_the_reference(svrm_golden, svrm_stages):
    triplane = torch.from_numpy(svrm_golden["triplane"])
    resolution = svrm_golden["grid_sdf"].shape[0]
    grid = svrm_stages("synthesizer", lambda synthesizer: sample_grid(lambda points: synthesizer(triplane, points[None])[0][0],
                                                                      resolution, BOUND))
    assert_matches(grid, svrm_golden["grid_sdf"], f"SDF on the {resolution}^3 grid")


def test_svrm_from_pictures_to_sdf_matches_the_reference(svrm_golden, svrm_stages):
    """The whole chain at once, so small differences that add up are caught too."""
    pictures = [Image.open(DATA / f"svrm_input_{index}.png") for index in range(7)]
    images, cameras = prepare_inputs(pictures[:6], pictures[6], read_config(SVRM_FILE).image_size)
    tokens = svrm_stages("encoder", lambda encoder: encoder(images, cameras))
    triplane = svrm_stages("triplane", lambda transformer: transformer(tokens))
    points = torch.from_numpy(svrm_golden["points"])[None]
    sdf, rgb = svrm_stages("synthesizer", lambda synthesizer: synthesizer(triplane, points))
    assert_matches(sdf[0], svrm_golden["sdf"], "SDF from the pictures")
    assert_matches(rgb[0], svrm_golden["rgb"], "colour from the pictures")


# -- multiview --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(MULTIVIEW))
def test_multiview_matches_the_reference_step_by_step(variant, monkeypatch):
    from diffusers import EulerAncestralDiscreteScheduler

    model_class, guidance = MULTIVIEW[variant]
    root = DATA / f"mvd_{variant}"
    with np.load(DATA / f"mvd_{variant}_golden.npz") as data:
        golden = {name: data[name] for name in data.files}
    memory = MemoryManager()
    model = model_class(root, register_components(memory, root, f"golden_{variant}", model_class.parts))
    ctx = JobContext(lambda event: None, lambda: False, SimpleNamespace(memory=memory))

    latents_per_step, pixels = [], []
    step, decode_pixels = EulerAncestralDiscreteScheduler.step, model.decode_pixels

    def recording_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        latents_per_step.append(result.prev_sample.clone())
        return result

    def recording_decode(*args, **kwargs):
        pixels.append(decode_pixels(*args, **kwargs))
        return pixels[-1]

    monkeypatch.setattr(EulerAncestralDiscreteScheduler, "step", recording_step)
    monkeypatch.setattr(model, "decode_pixels", recording_decode)
    output = model.generate(ctx, Image.open(DATA / "mvd_input.png"), seed=SEED, steps=STEPS, guidance=guidance)

    assert len(latents_per_step) == len(golden["latents"])
    for index, (ours, reference) in enumerate(zip(latents_per_step, golden["latents"])):
        assert_matches(ours, reference, f"latents after step {index + 1}")
    assert output.grid.size == tuple(golden["grid_size"])
    flat = pixels[0].permute(1, 2, 0).reshape(-1, 3)
    assert_matches(flat[golden["pixel_index"]], golden["pixels"], "decoded grid", PIXEL_TOLERANCE, scale=1.0)
    views = np.stack([np.asarray(view).reshape(-1, 3) for view in output.views])[:, golden["view_pixel_index"]]
    # The pixels above agree to 1e-3, so rounding to bytes can differ by one level at most.
    assert np.abs(views.astype(int) - golden["view_pixels"].astype(int)).max() <= 1, "the six views differ from the reference's"
