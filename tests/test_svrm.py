"""SVRM: strict compatibility with the official checkpoint, loading, numerics and views -> mesh."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from backend.errors import BackendError
from backend.memory import MemoryManager, WeightsError, stored_size_and_dtype
from backend.pipelines.base import JobContext, JobRequest
from backend.pipelines.hunyuan3d_v1.svrm import SVRM, SVRMConfig
from backend.pipelines.hunyuan3d_v1.svrm.cameras import svrm_cameras
from backend.pipelines.hunyuan3d_v1.svrm.layers import attention
from backend.pipelines.hunyuan3d_v1.svrm.loading import load_component, read_config, save_checkpoint
from backend.pipelines.hunyuan3d_v1.svrm.model import COMPONENT_PREFIXES
from backend.pipelines.hunyuan3d_v1.svrm.preprocess import prepare_inputs, split_view_grid
from backend.pipelines.hunyuan3d_v1.svrm.synthesizer import PLANE_AXES
from backend.pipelines.hunyuan3d_v1.svrm_pipeline import COMPONENTS, SVRMPipeline, register_svrm
from backend.protocol import ErrorCode
from backend.weights import SVRM_WEIGHTS, require

MANIFEST = Path(__file__).parent / "data" / "svrm_state_dict.json"
OFFICIAL_PARAMETERS = 458_688_965


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, so no test sees the machine's."""
    import huggingface_hub.constants

    hub = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return hub


def tiny_inputs(config: SVRMConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 7, 3, config.image_size, config.image_size, generator=generator)
    return images, svrm_cameras()[None]


def test_full_size_model_matches_the_official_checkpoint_manifest():
    manifest = {key: tuple(entry["shape"]) for key, entry in json.loads(MANIFEST.read_text()).items()}
    with torch.device("meta"):
        model = SVRM()
    ours = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert {key: shape for key, shape in ours.items() if manifest[key] != shape} == {}
    assert len(ours) == 509
    assert sum(math.prod(shape) for shape in ours.values()) == OFFICIAL_PARAMETERS
    assert not list(model.buffers())


def test_camera_vectors_match_the_reference_values():
    cameras = svrm_cameras()
    assert cameras.shape == (7, 20)
    np.testing.assert_allclose(cameras[0].numpy(), [0, 0, 1, 1.5, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1.09375, 1.09375, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(cameras[1, :8].numpy(), [-0.866025, 0, 0.5, 0.75, 0.5, 0, 0.866025, 1.299038], atol=1e-5)
    np.testing.assert_allclose(cameras[4, :8].numpy(), [0.866025, 0, -0.5, -0.75, -0.5, 0, -0.866025, -1.299038], atol=1e-5)
    assert torch.all(cameras[6] == 0)


def test_attention_in_query_slices_equals_whole():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 8, generator=generator) for n in (37, 50, 50))
    whole = attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, max_score_elements=2 * 50 * 5), whole)
    torch.testing.assert_close(attention(q, k, v, max_score_elements=1), whole)


def test_std_grid_is_split_into_views_in_azimuth_order():
    # Cell colours encode the azimuth the std layout puts there: [[0, 300], [60, 240], [120, 180]].
    azimuth_grid = [[0, 300], [60, 240], [120, 180]]
    grid = Image.new("RGB", (2 * 8, 3 * 8))
    for row, azimuths in enumerate(azimuth_grid):
        for col, azimuth in enumerate(azimuths):
            grid.paste((azimuth // 60 * 40, 0, 0), (col * 8, row * 8, (col + 1) * 8, (row + 1) * 8))
    views = split_view_grid(grid)
    assert [view.getpixel((4, 4))[0] // 40 for view in views] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(BackendError, match="3 rows x 2 columns"):
        split_view_grid(Image.new("RGB", (20, 20)))


def test_condition_image_comes_last_on_white(tmp_path):
    views = [Image.new("RGB", (32, 32), (0, 0, 0))] * 6
    condition = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # fully transparent, not square
    images, cameras = prepare_inputs(views, condition, size=28)
    assert images.shape == (1, 7, 3, 28, 28) and cameras.shape == (1, 7, 20)
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(images[0, 6, :, 14, 14], white)
    assert images[0, :6].max() < 0


def test_tiny_float16_checkpoint_loads_strictly_and_runs_in_float32(tmp_path):
    torch.manual_seed(0)
    config = SVRMConfig.tiny()
    reference = SVRM(config).eval()
    path = tmp_path / "svrm.safetensors"
    save_checkpoint(reference, path, dtype=torch.float16)
    assert {t.dtype for t in load_file(str(path)).values()} == {torch.float16}
    assert read_config(path) == config
    assert sum(stored_size_and_dtype([path], prefix)[0] for prefix in COMPONENT_PREFIXES.values()) == 2 * sum(p.numel() for p in reference.parameters())

    memory = MemoryManager()  # the CPU: float16 weights must compute in float32
    register_svrm(memory, path)
    images, cameras = tiny_inputs(config)
    points = torch.rand(1, 500, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6

    def run(name: str, fn):
        def stage(modules):
            module = modules[COMPONENTS[name]]
            assert {p.dtype for p in module.parameters()} == {torch.float32}
            with torch.no_grad():
                return fn(module)

        return memory.run_stage(name, [COMPONENTS[name]], stage)

    context = run("encoder", lambda encoder: encoder(images, cameras))
    triplane = run("triplane", lambda transformer: transformer(context))
    sdf, rgb = run("synthesizer", lambda synthesizer: synthesizer(triplane, points))
    with torch.no_grad():
        expected_triplane = reference.encode(images, cameras)
        expected_sdf, expected_rgb = reference.query(expected_triplane, points)
    assert triplane.dtype == torch.float32 and triplane.shape == (1, 3, 8, 16, 16)
    assert torch.isfinite(triplane).all() and torch.isfinite(sdf).all() and torch.isfinite(rgb).all()
    # The only difference is the float16 rounding of the stored weights.
    torch.testing.assert_close(triplane, expected_triplane, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(sdf, expected_sdf, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(rgb, expected_rgb, atol=1e-2, rtol=1e-2)
    assert (rgb >= -0.001).all() and (rgb <= 1.001).all()


def test_loading_rejects_a_checkpoint_that_does_not_fit(tmp_path):
    config = SVRMConfig.tiny()
    path = tmp_path / "svrm.safetensors"
    save_checkpoint(SVRM(config), path)
    state = load_file(str(path))

    missing = dict(state)
    del missing["render.decoder.net.2.bias"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="missing 1 key.*decoder.net.2.bias"):
        load_component(tmp_path / "missing.safetensors", "synthesizer", config)

    extra = dict(state, **{"img_encoder.model.blocks.9.ls1.gamma": torch.zeros(32, dtype=torch.float16)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsError, match="unexpected 1 key.*model.blocks.9.ls1.gamma"):
        load_component(tmp_path / "extra.safetensors", "encoder", config)

    reshaped = dict(state, **{"img_to_triplane_decoder.upsampler.bias": torch.zeros(7, dtype=torch.float16)})
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    with pytest.raises(WeightsError, match="upsampler.bias"):
        load_component(tmp_path / "reshaped.safetensors", "triplane", config)


def sphere_svrm(
    radius: float = 0.3, centre: tuple[float, float, float] = (0.0, 0.0, 0.0), config: SVRMConfig | None = None
) -> SVRM:
    """A tiny SVRM whose SDF, whatever the images, is a sphere-like surface around ``centre``.

    The transformer blocks' residual branches are zeroed, so the triplane is the upsampled
    learned queries. Each query token holds (cos, sin) of its plane position's angles, shifted
    by the centre, in a zero-mean, constant-norm layout that the final LayerNorm only rescales;
    the upsampler turns them into, at every texel, f = -(cos(a (u - cu)) + cos(a (v - cv))) / 2
    with a = pi/2 / half-box. Summed over the three planes that is -(cos(a (x - cx)) + cos(a
    (y - cy)) + cos(a (z - cz))), which the MLP shifts so its zero level passes through
    ``radius`` on the axes through the centre. Colour is a constant orange. ``config`` defaults
    to the tiny one; the GPU benchmark builds the full-size model the same way.
    """
    config = config or SVRMConfig.tiny()
    model = SVRM(config).eval()
    transformer = config.transformer
    side, up, width = transformer.plane_tokens, transformer.upsample, transformer.width
    half_box = config.synthesizer.box_size / 2
    with torch.no_grad():
        for block in model.img_to_triplane_decoder.img_to_triplane_decoder.transformer_blocks:
            for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
                layer.weight.zero_()
                layer.bias.zero_()
        # Token (row i, column j) sits at u_j, v_i in [-1, 1] plane coordinates (texel-centre convention).
        centres = (torch.arange(side) + 0.5) / side * 2 - 1
        angle = math.pi / 2
        tokens = torch.zeros(3, side, side, width)
        for plane, (column_axis, row_axis) in enumerate(PLANE_AXES):
            shift_u, shift_v = centre[column_axis] / half_box, centre[row_axis] / half_box
            v, u = torch.meshgrid((centres - shift_v) * angle, (centres - shift_u) * angle, indexing="ij")
            for slot, value in enumerate((u.cos(), u.sin(), v.cos(), v.sin())):
                tokens[plane, ..., 2 * slot], tokens[plane, ..., 2 * slot + 1] = value, -value
        model.img_to_triplane_decoder.pos_emb.copy_(tokens.reshape(1, -1, width))
        # LayerNorm maps the norm-2 zero-mean token to norm sqrt(width); undo that scale.
        unscale = 2 / width**0.5
        weight = torch.zeros(transformer.channels, up, up, width)
        offsets = ((torch.arange(up) + 0.5) / up - 0.5) * (2 / side) * angle  # texel centre minus token centre
        for dy in range(up):
            for dx in range(up):
                # cos(t + d) = cos t cos d - sin t sin d, for the column (u) and row (v) angle.
                for cos_slot, sin_slot, offset in ((0, 2, offsets[dx]), (4, 6, offsets[dy])):
                    weight[0, dy, dx, cos_slot] = -0.5 * unscale * math.cos(offset)
                    weight[0, dy, dx, sin_slot] = 0.5 * unscale * math.sin(offset)
        model.img_to_triplane_decoder.upsampler.weight.copy_(weight.reshape(-1, width))
        model.img_to_triplane_decoder.upsampler.bias.zero_()
        first, last = model.render.decoder.net[0], model.render.decoder.net[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, [0, transformer.channels, 2 * transformer.channels]] = 1.0  # hidden 0 = sum over planes
        first.bias[0] = 3.0  # keeps hidden 0 = 3 - (cos + cos + cos) >= 0 through the ReLU
        last.weight.zero_()
        last.weight[0, 0] = 1.0
        last.bias.copy_(torch.tensor([2 + math.cos(angle * radius / half_box) - 3.0, 2.0, 0.0, -2.0]))
    return model


def test_sphere_model_field_is_a_sphere():
    centre = torch.tensor([0.15, -0.1, 0.05])
    model = sphere_svrm(radius=0.3, centre=tuple(centre.tolist()))
    images, cameras = tiny_inputs(model.config)
    directions = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    with torch.no_grad():
        triplane = model.encode(images, cameras)
        middle, _ = model.query(triplane, centre.view(1, 1, 3))
        inner, _ = model.query(triplane, centre + directions[None] * 0.2)
        outer, rgb = model.query(triplane, centre + directions[None] * 0.4)
    assert middle.item() < 0
    assert (inner < 0).all() and (outer > 0).all()
    torch.testing.assert_close(rgb[0, 0], torch.sigmoid(torch.tensor([2.0, 0.0, -2.0])) * 1.002 - 0.001)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def views_request(pipeline: SVRMPipeline, **params) -> JobRequest:
    grid = Image.new("RGB", (2 * 32, 3 * 32), (255, 255, 255))
    grid.paste((90, 120, 200), (8, 8, 24, 88))
    condition = Image.new("RGBA", (48, 48), (200, 80, 40, 255))
    return pipeline.validate(JobRequest(pipeline.name, params, images={"views": png(grid), "image": png(condition)}))


def test_pipeline_turns_views_into_a_coloured_mesh_in_the_y_up_frame(tmp_path):
    weights = tmp_path / "weights"
    (weights / "svrm").mkdir(parents=True)
    # In SVRM's Z-up frame the sphere sits towards the front camera (+X) and up (+Z).
    save_checkpoint(sphere_svrm(radius=0.25, centre=(0.15, 0.0, 0.1)), weights / "svrm" / "svrm.safetensors")
    pipeline = SVRMPipeline(weights_dir=str(weights))
    report = pipeline.check_weights()
    assert report.ready and report.where.endswith("svrm.safetensors")

    events: list[dict] = []
    memory = MemoryManager()
    output = pipeline.run(views_request(pipeline, resolution=48, max_faces=3000), JobContext(events.append, lambda: False, SimpleNamespace(memory=memory)))
    mesh = output.mesh
    assert 100 < mesh.face_count <= 3000
    # Output frame: Y up, front on +Z, so (x, y, z) = SVRM's (y, z, x).
    centre = (mesh.positions.min(axis=0) + mesh.positions.max(axis=0)) / 2
    np.testing.assert_allclose(centre, [0.0, 0.1, 0.15], atol=0.02)
    radii = np.linalg.norm(mesh.positions - centre, axis=1)
    assert 0.22 < radii.min() and radii.max() < 0.28
    orange = torch.sigmoid(torch.tensor([2.0, 0.0, -2.0])).numpy() * 1.002 - 0.001
    np.testing.assert_allclose(mesh.colors_float()[:, :3], np.broadcast_to(orange, (mesh.vertex_count, 3)), atol=1 / 255)
    stages = [event["stage"] for event in events if event["step"] is not None]
    assert stages.index("encode") < stages.index("triplane") < stages.index("mesh")
    assert {memory.placement(name) for name in COMPONENTS.values()} == {"ready"}  # cpu mode keeps them loaded


def test_upstream_mesh_finish_clusters_the_surface(tmp_path):
    weights = tmp_path / "weights"
    (weights / "svrm").mkdir(parents=True)
    save_checkpoint(sphere_svrm(radius=0.25), weights / "svrm" / "svrm.safetensors")
    pipeline = SVRMPipeline(weights_dir=str(weights))
    context = JobContext(lambda event: None, lambda: False, SimpleNamespace(memory=MemoryManager()))
    meshes = {finish: pipeline.run(views_request(pipeline, resolution=96, max_faces=10**6, mesh_finish=finish), context).mesh
              for finish in ("clean", "upstream")}
    # Marching cubes puts vertices closer than 0.007 near the grid's samples; clustering merges them.
    assert meshes["upstream"].face_count < 0.9 * meshes["clean"].face_count
    radii = np.linalg.norm(meshes["upstream"].positions, axis=1)
    assert 0.22 < radii.min() and radii.max() < 0.28


def test_pipeline_needs_both_inputs_and_says_how_to_get_the_weights(tmp_path):
    pipeline = SVRMPipeline(weights_dir=str(tmp_path))
    report = pipeline.check_weights()
    assert not report.ready
    assert report.download == f'hf download tencent/Hunyuan3D-1 --include "svrm/*" --local-dir "{tmp_path}"'
    with pytest.raises(BackendError) as missing_image:
        pipeline.validate(JobRequest(pipeline.name, {}, images={"views": png(Image.new("RGB", (64, 96)))}))
    assert missing_image.value.code == ErrorCode.BAD_INPUT
    assert "condition image" in missing_image.value.message
    with pytest.raises(BackendError) as missing_weights:
        pipeline.run(views_request(pipeline), JobContext(lambda event: None, lambda: False, SimpleNamespace(memory=MemoryManager())))
    assert missing_weights.value.code == ErrorCode.WEIGHTS_MISSING
    assert "hf download" in missing_weights.value.hint


def test_weights_are_found_in_the_hugging_face_cache(hf_cache):
    assert not SVRMPipeline().check_weights().ready
    repo = hf_cache / "models--tencent--Hunyuan3D-1"
    snapshot = repo / "snapshots" / "0123abcd"
    (snapshot / "svrm").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    checkpoint = snapshot / "svrm" / "svrm.safetensors"
    save_checkpoint(SVRM(SVRMConfig.tiny()), checkpoint)
    report = SVRMPipeline().check_weights()
    assert report.ready and report.where == str(checkpoint)

    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # an interrupted copy
    report = SVRMPipeline().check_weights()
    assert not report.ready and "unreadable" in report.missing[0]
    assert report.download == 'hf download tencent/Hunyuan3D-1 --include "svrm/*"'
    with pytest.raises(BackendError) as corrupt:
        require(SVRM_WEIGHTS, None)
    assert corrupt.value.code == ErrorCode.WEIGHTS_CORRUPT and "hf download" in corrupt.value.hint
