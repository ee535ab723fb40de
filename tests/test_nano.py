"""Nano: procedural shapes, renderer, data, model, weights, training and the pipeline."""

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

from backend.errors import BackendError
from backend.memory import MemoryManager, WeightsError
from backend.pipelines.base import JobContext, JobRequest
from backend.pipelines.nano import data, metrics, shapes
from backend.pipelines.nano.checkpoint import BUNDLED_WEIGHTS, load_model, read_config, save_weights
from backend.pipelines.nano.model import NanoConfig, NanoModel
from backend.pipelines.nano.pipeline import NanoPipeline, picture_to_rgba
from backend.pipelines.nano.render import frame_object, render

REPO = Path(__file__).resolve().parents[1]
# Small enough to train for a few steps in seconds; the input size is the real one.
TINY = {"encoder_channels": [8, 16, 16, 16, 16], "latent_dim": 16, "plane_size": 16, "plane_channels": 8, "hidden_dim": 16}
# Validation shapes of kinds the shipped weights do well on (sphere and snowman, both above 0.9 on average).
SPHERE_SEED, SNOWMAN_SEED = data.COMPARISON_SEEDS[8], data.COMPARISON_SEEDS[35]


def points(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_primitive_distances_have_the_right_sign_and_scale():
    p = points([0, 0, 0], [0.5, 0, 0], [1, 0, 0])
    assert shapes.sd_sphere(p, 0.5).tolist() == pytest.approx([-0.5, 0.0, 0.5])
    assert shapes.sd_box(p, 0.5, 0.2, 0.2).tolist() == pytest.approx([-0.2, 0.0, 0.5])
    assert shapes.sd_rounded_box(points([0.9, 0, 0]), 0.5, 0.5, 0.5, 0.1).item() == pytest.approx(0.4)
    assert shapes.sd_cylinder(points([0, 0, 0], [0, 0, 0.9], [0.3, 0, 0]), 0.3, 0.5).tolist() == pytest.approx([-0.3, 0.4, 0.0])
    assert shapes.sd_capsule(points([0, 0, 0.9], [0.2, 0, 0]), 0.5, 0.2).tolist() == pytest.approx([0.2, 0.0], abs=1e-6)
    assert shapes.sd_torus(points([0.5, 0, 0], [0, 0, 0]), 0.5, 0.1).tolist() == pytest.approx([-0.1, 0.4])
    # Cone of half-height 0.5 from radius 0.4 at z=-0.5 to a point at z=0.5.
    cone = shapes.sd_cone(points([0, 0, 0], [0, 0, -0.6], [0.4, 0, -0.5], [0, 0, 0.7]), 0.5, 0.4, 0.0)
    assert cone[0] < 0 and cone[1] == pytest.approx(0.1) and cone[2] == pytest.approx(0.0, abs=1e-6)
    assert cone[3] == pytest.approx(0.2, abs=1e-6)
    ellipsoid = shapes.sd_ellipsoid(points([0, 0, 0], [0.6, 0, 0], [0, 0, 0.3], [0, 0, 0.5]), 0.6, 0.4, 0.3)
    assert ellipsoid[0] < 0 and abs(ellipsoid[1]) < 1e-6 and abs(ellipsoid[2]) < 1e-6 and ellipsoid[3] > 0


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_are_normalised_to_the_half_extent(seed):
    shape = shapes.random_shape(np.random.default_rng(seed)).normalized()
    low, high = shape.bounding_box()
    # Bounds are measured on a grid (to about 1/40 of the extent), so they agree to a few hundredths.
    assert (high - low).max() / 2 == pytest.approx(shapes.HALF_EXTENT, abs=0.04)
    assert np.abs((high + low) / 2).max() < 0.03
    assert 1 <= len(shape.parts) <= 4
    assert shape.sdf(torch.zeros(1, 3) + 0.58).item() > 0  # the cube's corner is always outside


@pytest.mark.parametrize(
    ("half_sides", "elevation_degrees", "expected"),
    [
        ((0.2, 0.4, 0.3), 0, (0.25, 0.5, 0.375)),  # the picture's width (Y) sets the size
        ((0.6, 0.3, 0.2), 0, (0.55, 0.275, 0.183)),  # deep: sized by the picture, held to MAX_HALF_EXTENT
        # Seen from 30 degrees up, a tall post shows 0.05 sin 30 + 0.4 cos 30 = 0.371 of height.
        ((0.05, 0.1, 0.4), 30, (0.067, 0.135, 0.538)),
    ],
)
def test_the_picture_fixes_a_shapes_size(half_sides, elevation_degrees, expected):
    box = shapes.Shape("box", (shapes.Part("box", half_sides, np.eye(3), np.array([0.1, -0.2, 0.3]), (1.0, 1.0, 1.0)),))
    low, high = box.normalized(view_elevation=math.radians(elevation_degrees)).bounding_box(resolution=80)
    # Bounds are measured on grids (normalized's is coarse), so they agree to a couple of hundredths;
    # sizing by the longest side, or ignoring the elevation, would be off by 0.04 or more.
    assert ((high - low) / 2).tolist() == pytest.approx(expected, abs=0.025)
    assert np.abs((high + low) / 2).max() < 0.025


def test_training_shapes_fit_the_models_cube():
    for seed in range(24):
        shape, _, _ = data.aligned_shape(seed)
        low, high = shape.bounding_box()
        assert ((high - low) / 2).max() <= shapes.MAX_HALF_EXTENT + 0.03
        assert shape.sdf(torch.tensor([[data.BOUND] * 3, [-data.BOUND] * 3])).min().item() > 0


def test_colour_is_the_nearest_parts():
    shape = shapes.snowman(np.random.default_rng(3))
    nose = shape.parts[-1]
    _, color = shape.sdf_and_color(torch.from_numpy(nose.translation).float()[None])
    assert color[0].tolist() == pytest.approx(list(nose.color))


def test_render_is_an_object_on_a_transparent_background():
    sphere = shapes.Shape("sphere", (shapes.Part("sphere", (0.4,), np.eye(3), np.zeros(3), (1.0, 0.2, 0.2)),))
    image = render(sphere, math.radians(10), 64)
    assert image.shape == (64, 64, 4)
    assert image[32, 32, 3] == 1.0 and image[0, 0].tolist() == [0, 0, 0, 0]
    lit = image[image[..., 3] > 0][:, :3]
    assert lit[:, 0].max() > 0.8 and (lit[:, 1] <= lit[:, 0]).all()
    # A sphere of radius 0.4 at distance 1.5 with a 49-degree field of view covers about a fifth of the picture.
    assert 0.15 < image[..., 3].mean().item() < 0.3
    framed = frame_object(image, 32)
    columns = (framed[..., 3] > 0.5).any(dim=0).nonzero().squeeze(1)
    assert (columns[-1] - columns[0] + 1).item() == pytest.approx(32 * 0.85, abs=2)


def test_samples_are_determined_by_their_seed():
    a, b, other = data.make_sample(11), data.make_sample(11), data.make_sample(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.points, b.points) and np.array_equal(a.sdf, b.sdf)
    assert not np.array_equal(a.image, other.image)
    counts = data.PointCounts()
    assert a.points.shape == (counts.total, 3) and a.colors.shape == (counts.total, 3)
    assert np.abs(a.sdf[: counts.surface]).max() < 3e-3
    assert np.abs(a.points).max() <= data.BOUND
    assert a.image[..., 3].max() == 255 and a.image[0, 0, 3] == 0


def test_seed_ranges_are_disjoint_and_the_shipped_run_kept_to_them():
    ranges = {"training": data.TRAINING_SEEDS, "validation": data.VALIDATION_SEEDS, "test": data.TEST_SEEDS}
    for name, seeds in ranges.items():
        for other_name, other in ranges.items():
            if name != other_name:
                assert seeds.stop <= other.start or other.stop <= seeds.start, f"{name} and {other_name} overlap"
    assert data.COMPARISON_SEEDS.start == data.VALIDATION_SEEDS.start and data.CALIBRATION_SEEDS.stop == data.VALIDATION_SEEDS.stop
    assert data.COMPARISON_SEEDS.stop == data.CALIBRATION_SEEDS.start
    # The shipped weights' run record: what it trained and calibrated on stays out of the test seeds,
    # and so do the example pictures, which were picked by looking at them.
    record = json.loads(BUNDLED_WEIGHTS.with_suffix(".json").read_text())
    assert record["args"]["shapes"] <= len(data.TRAINING_SEEDS)
    assert max(record["calibration"]["shapes"], record["args"]["validation_shapes"]) <= len(data.CALIBRATION_SEEDS)
    for example in json.loads((REPO / "examples" / "nano_examples.json").read_text()):
        assert example["seed"] in data.VALIDATION_SEEDS


def test_iou_and_chamfer_of_two_known_spheres():
    def sphere(radius):
        return shapes.Shape("sphere", (shapes.Part("sphere", (radius,), np.eye(3), np.zeros(3), (0.8, 0.2, 0.2)),))

    true, smaller = sphere(0.4), sphere(0.36)
    itself = metrics.score(true.sdf, lambda p: true.sdf_and_color(p)[1], true, resolution=64)
    assert itself.iou == 1.0 and itself.chamfer < 0.01 and itself.color_error < 1e-6
    # Volumes go as the cube of the radius: IoU (0.36 / 0.4)^3 = 0.729; the surfaces are 0.04 apart.
    shrunk = metrics.score(smaller.sdf, lambda p: smaller.sdf_and_color(p)[1], true, resolution=64)
    assert shrunk.iou == pytest.approx(0.729, abs=0.02) and shrunk.chamfer == pytest.approx(0.04, abs=0.004)


def test_bootstrap_interval_matches_the_standard_error():
    values = np.random.default_rng(5).normal(2.0, 1.0, size=400)
    low, high = metrics.bootstrap_interval(values)
    # For a mean of 400 draws with spread 1, a 95% interval is about 2 x 1.96 / 20 = 0.196 wide.
    assert low < values.mean() < high and high - low == pytest.approx(0.196, rel=0.1)
    assert metrics.bootstrap_interval(values) == (low, high)


def test_model_shapes_and_parameter_budget():
    config = NanoConfig.from_dict(TINY)
    model = NanoModel(config)
    planes = model.encode(torch.rand(2, 4, 128, 128))
    assert planes.shape == (2, 3, 8, 16, 16)
    sdf, rgb = model.query(planes, torch.rand(2, 100, 3) - 0.5)
    assert sdf.shape == (2, 100) and rgb.shape == (2, 100, 3) and 0 <= rgb.min() and rgb.max() <= 1
    full = sum(p.numel() for p in NanoModel(NanoConfig()).parameters())
    assert 2_000_000 < full and full * 4 <= 25_000_000  # a few million parameters, at most 25 MB as float32


def test_weights_round_trip_through_the_real_loader(tmp_path):
    model = NanoModel(NanoConfig.from_dict(TINY))
    path = tmp_path / "nano.safetensors"
    save_weights(model, path)
    assert read_config(path) == model.config
    loaded = load_model(path)
    images, query = torch.rand(1, 4, 128, 128), torch.rand(1, 50, 3) - 0.5
    with torch.inference_mode():
        expected, got = model.eval()(images, query), loaded(images, query)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    bare = tmp_path / "bare.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    with pytest.raises(WeightsError, match="no Nano config"):
        read_config(bare)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    from backend.pipelines.nano import train

    out = tmp_path_factory.mktemp("nano-weights")
    record = train.main(["--out", str(out), "--shapes", "8", "--steps", "100", "--batch-size", "4", "--points", "512",
                         "--checkpoint-every", "100", "--validation-shapes", "1", "--threads", "1", "--warmup", "10",
                         "--lr", "3e-3", "--calibration-shapes", "3", "--config", json.dumps(TINY)])
    return out, record


@pytest.mark.parametrize("device, says", [("gpu0", "not a torch device name"), ("cuda", "sees no CUDA GPU")])
def test_training_refuses_a_device_it_cannot_use(device, says, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from backend.pipelines.nano import train

    with pytest.raises(SystemExit):
        train.parse_args(["--device", device])
    assert says in capsys.readouterr().err


def test_training_lowers_the_loss_and_writes_its_record(trained_tiny):
    out, _ = trained_tiny
    written = json.loads((out / "nano.json").read_text())
    assert written["steps_done"] == 100 and written["partial"] is False
    history = written["history"]
    assert history[-1]["sdf_loss"] < history[0]["sdf_loss"]
    # The run ends by placing the surface on validation shapes, and keeps that level with the weights.
    calibration = written["calibration"]
    assert calibration["shapes"] == 3
    assert read_config(out / "nano.safetensors") == NanoConfig.from_dict({**TINY, "surface_level": calibration["level"]})


@pytest.mark.parametrize("offset", [0.0125, -0.0075])
def test_calibration_finds_the_level_a_field_is_off_by(offset):
    from backend.pipelines.nano.calibrate import best_level, surface_level_scores

    # The true field moved by ``offset``: too thin (positive) or too fat (negative) a shape; only
    # the level that takes the offset back out scores a perfect IoU.
    scores = surface_level_scores(lambda shape, elevation: lambda p: shape.sdf(p) + offset,
                                  data.CALIBRATION_SEEDS[:2], resolution=40)
    assert best_level(scores) == pytest.approx(offset)
    assert scores[best_level(scores)] > 0.999 and scores[0.0] < 0.95


def test_evaluate_prints_the_figures_and_refuses_a_split_it_does_not_have(trained_tiny, tmp_path, capsys):
    from backend.pipelines.nano import evaluate

    figures = evaluate.main(["--weights", str(trained_tiny[0] / "nano.safetensors"), "--split", "validation", "--shapes", "4",
                             "--grid", "24", "--timing-runs", "0", "--threads", "1", "--json", str(tmp_path / "figures.json")])
    printed = capsys.readouterr().out
    assert [row["seed"] for row in figures["per_shape"]] == list(data.COMPARISON_SEEDS[:4])
    low, high = figures["iou_interval"]
    assert low <= figures["mean_iou"] <= high
    assert sum(kind["shapes"] for kind in figures["by_kind"].values()) == 4
    for name in figures["by_kind"]:
        assert f"| {name} | " in printed
    assert json.loads((tmp_path / "figures.json").read_text())["mean_iou"] == pytest.approx(figures["mean_iou"])
    # Shared out among processes, each shape gets the figures it gets in one process.
    shared = evaluate.score_seeds(trained_tiny[0] / "nano.safetensors", data.COMPARISON_SEEDS[:2], 24, workers=2)
    assert [row["iou"] for row in shared["per_shape"]] == pytest.approx([row["iou"] for row in figures["per_shape"][:2]], abs=1e-3)
    with pytest.raises(SystemExit):
        evaluate.main(["--split", "test", "--shapes", str(len(data.TEST_SEEDS) + 1)])
    assert "the test split has seeds for 1 to" in capsys.readouterr().err


def test_the_surface_level_shifts_every_query_and_is_saved(tmp_path):
    model = NanoModel(NanoConfig.from_dict(TINY)).eval()
    images, query = torch.rand(1, 4, 128, 128), torch.rand(1, 50, 3) - 0.5
    with torch.inference_mode():
        raw_sdf, raw_rgb = model(images, query)
        model.set_surface_level(0.02)
        sdf, rgb = model(images, query)
    assert torch.allclose(sdf, raw_sdf - 0.02) and torch.equal(rgb, raw_rgb)
    save_weights(model, tmp_path / "nano.safetensors")
    with torch.inference_mode():
        assert torch.equal(load_model(tmp_path / "nano.safetensors")(images, query)[0], sdf)


def context(events: list) -> JobContext:
    return JobContext(events.append, lambda: False, SimpleNamespace(memory=MemoryManager()))


def png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pipeline_turns_a_picture_into_a_coloured_mesh(trained_tiny):
    from backend.pipelines.nano.evaluate import example_png

    pipeline = NanoPipeline(weights_dir=str(trained_tiny[0]))
    assert pipeline.check_weights().ready
    events: list = []
    request = pipeline.validate(JobRequest("nano", {"resolution": 48, "max_faces": 2000}, images={"image": example_png(data.COMPARISON_SEEDS[0])}))
    output = pipeline.run(request, context(events))
    mesh = output.mesh
    assert 0 < mesh.face_count <= 2000 and mesh.colors is not None
    assert next(e["stage"] for e in events if e["step"] is not None) == "prepare"
    assert {e["stage"] for e in events} == {"prepare", "encode", "mesh"}
    low, high = mesh.bounds()
    assert min(low) >= -0.61 and max(high) <= 0.61


def test_pipeline_rejects_a_picture_without_an_object(trained_tiny):
    pipeline = NanoPipeline(weights_dir=str(trained_tiny[0]))
    blank = np.zeros((64, 64, 4), dtype=np.uint8)
    request = pipeline.validate(JobRequest("nano", {}, images={"image": png(blank)}))
    with pytest.raises(BackendError, match="no object"):
        pipeline.run(request, context([]))


def test_background_is_estimated_from_the_border_without_alpha():
    rgb = np.full((40, 40, 3), 240, dtype=np.uint8)
    rgb[10:30, 15:25] = (200, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    alpha = picture_to_rgba(buffer.getvalue())[..., 3]
    assert alpha[20, 20] == 1.0 and alpha[2, 2] == 0.0 and alpha[20, 5] == 0.0


def test_mesh_occupancy_matches_the_shape_it_was_extracted_from():
    from skimage.measure import marching_cubes

    shape, _, _ = data.aligned_shape(data.VALIDATION_SEEDS[1])
    grid = shape.sdf(metrics.grid_points(64, 0.6)).reshape(64, 64, 64).numpy()
    vertices, faces, _, _ = marching_cubes(grid, 0.0)
    vertices = vertices * (1.2 / 63) - 0.6
    assert metrics.mesh_iou(vertices, faces, shape, resolution=40) > 0.9
    other, _, _ = data.aligned_shape(data.VALIDATION_SEEDS[2])
    assert metrics.mesh_iou(vertices, faces, other, resolution=40) < 0.9


@pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="the trained Nano weights are not in this checkout")
@pytest.mark.parametrize(("seed", "kind", "bar"), [(SPHERE_SEED, "sphere", 0.9), (SNOWMAN_SEED, "snowman", 0.9)])
def test_shipped_weights_reconstruct_easy_validation_shapes_well(seed, kind, bar):
    from backend.pipelines.nano.evaluate import score_seed

    shape, scores = score_seed(load_model(BUNDLED_WEIGHTS), seed, resolution=48, chamfer_points=2000)
    assert shape.name == kind
    assert scores.iou > bar and scores.chamfer < 0.03


@pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="the trained Nano weights are not in this checkout")
def test_shipped_weights_reconstruct_the_first_example_above_the_bar():
    examples = REPO / "examples"
    first = json.loads((examples / "nano_examples.json").read_text())[0]
    shape, _, _ = data.aligned_shape(first["seed"])
    pipeline = NanoPipeline()
    image = (examples / first["image"]).read_bytes()
    request = pipeline.validate(JobRequest("nano", {"resolution": 96, "max_faces": 20000}, images={"image": image}))
    mesh = pipeline.run(request, context([])).mesh
    # The mesh is Y up with the view along -Z: mesh (x, y, z) is the field's (y, z, x).
    field_frame = mesh.positions[:, [2, 0, 1]]
    assert metrics.mesh_iou(field_frame, mesh.faces, shape, resolution=48) > 0.6
