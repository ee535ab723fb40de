"""The texture stage end to end with tiny random paint weights in the released layouts: a shape job's
``texture`` option through ``generate``, and ``hunyuan3d-2-paint`` on a mesh it is sent."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from conftest import REPO, backend_env
from paint_fixtures import write_tiny_paint_weights
from PIL import Image

from backend.errors import BackendError
from backend.jobs import Job, JobEngine
from backend.mesh.inputs import check_input_mesh
from backend.pipelines import get
from backend.pipelines.base import JobRequest
from backend.protocol import ErrorCode
from backend.runtime import Runtime
from backend.texture.stage import STAGES, recenter

MUG = REPO / "examples" / "mug.png"
# Small and quick: the tiny models, a 128^2 texture, two denoising steps each.
QUICK = {"texture_size": 128, "texture_steps": 2, "delight_steps": 2}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("paint-weights")
    write_tiny_paint_weights(root, turbo=True)
    return root


def read_glb(path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    json_length = struct.unpack_from("<I", data, 12)[0]
    document = json.loads(data[20:20 + json_length])
    binary = data[20 + json_length + 8:]
    return document, binary


def test_generate_nano_texture_writes_a_glb_with_its_base_color_texture(tmp_path, weights):
    out = tmp_path / "results" / "mug.glb"
    settings = [f"--set={name}={value}" for name, value in QUICK.items()]
    run = subprocess.run([sys.executable, "-m", "backend", "generate", "--model", "nano", "--texture", "--image", str(MUG),
                          "--weights", str(weights), "--max-faces", "1500", *settings, "-o", str(out)],
                         capture_output=True, text=True, env=backend_env(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr
    document, binary = read_glb(out)
    primitive = document["meshes"][0]["primitives"][0]
    assert "TEXCOORD_0" in primitive["attributes"] and "COLOR_0" not in primitive["attributes"]
    texture = document["materials"][primitive["material"]]["pbrMetallicRoughness"]["baseColorTexture"]
    image = document["images"][document["textures"][texture["index"]]["source"]]
    view = document["bufferViews"][image["bufferView"]]
    embedded = binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
    assert image["mimeType"] == "image/png"
    beside = out.with_name("mug.base_color.png")
    assert beside.read_bytes() == embedded, "the PNG beside the GLB is the texture inside it"
    pixels = np.asarray(Image.open(io.BytesIO(embedded)).convert("RGB"))
    assert pixels.shape == (128, 128, 3) and pixels.std() > 1, "a painted texture, not a flat fill"
    mesh = trimesh.load(out, force="mesh")
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert 0 < len(mesh.faces) <= 1500
    assert "delight" in run.stderr and "bake" in run.stderr


def icosphere() -> tuple[np.ndarray, np.ndarray]:
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    return np.asarray(sphere.vertices, dtype=np.float32), np.asarray(sphere.faces, dtype=np.int32)


def paint_job(weights, sink, **params) -> tuple[JobEngine, Job]:
    engine = JobEngine(Runtime.create(device="cpu", memory="cpu"), output_dir=None, weights_dir=str(weights))
    positions, faces = icosphere()
    request = JobRequest("hunyuan3d-2-paint", {**QUICK, **params}, images={"image": MUG.read_bytes()},
                         mesh=check_input_mesh(positions, faces))
    return engine, Job("t", engine.pipeline("hunyuan3d-2-paint").validate(request), owner=None, sink=sink)


def test_the_paint_pipeline_paints_a_mesh_it_is_sent(weights, tmp_path):
    events = []
    engine, job = paint_job(weights, lambda header, buffers: events.append((header, buffers)), texture_views="four")
    engine.output_dir = tmp_path
    engine.execute(job)
    header, buffers = events[-1]
    assert header["op"] == "result", header
    stages = [e["stage"] for e, _ in events if e["op"] == "progress" and e["step"] is not None]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == ["background", *STAGES]
    paint_steps = [e["step"] for e, _ in events if e.get("stage") == "paint" and e["step"] is not None]
    assert paint_steps[-1] == 2, "one progress event per denoising step"
    assert header["mesh"]["textures"] == ["base_color"]
    named = {b.name: b for b in buffers}
    assert "colors" not in named and named["uvs"].shape == (header["mesh"]["vertices"], 2)
    uvs = named["uvs"].to_array()
    assert uvs.min() >= 0 and uvs.max() <= 1
    positions, faces = icosphere()
    painted = named["positions"].to_array()
    assert named["faces"].shape == faces.shape and header["mesh"]["vertices"] >= len(positions)
    # Split at the seams, never moved: every vertex is one of the input's, and each face keeps its corners' positions.
    assert np.array_equal(painted[named["faces"].to_array()], positions[faces])
    assert sorted(header["images"]) == ["texture_delit", *(f"texture_view_{i}" for i in range(4))]
    assert header["info"]["paint_model"] == "turbo" and 0.5 < header["info"]["texels_seen"] <= 1
    assert Image.open(header["saved"]["texture.base_color"]).size == (128, 128)


def test_cancel_stops_the_texture_stage_between_paint_steps(weights):
    events = []

    def sink(header, buffers):
        events.append(header)
        if header.get("stage") == "paint":
            job.cancel.set()

    engine, job = paint_job(weights, sink)
    engine.execute(job)
    assert events[-1]["op"] == "cancelled" and events[-1]["stage"] == "paint"
    assert not any(e.get("stage") == "bake" for e in events)


def test_texture_without_paint_weights_says_what_to_download(tmp_path):
    nano = get("nano")(weights_dir=str(tmp_path))
    with pytest.raises(BackendError) as caught:
        nano.validate(JobRequest("nano", {"texture": True}, images={"image": MUG.read_bytes()}))
    assert caught.value.code == ErrorCode.WEIGHTS_MISSING
    assert "hf download tencent/Hunyuan3D-2" in caught.value.hint and "hunyuan3d-delight-v2-0" in caught.value.hint


def test_paint_pipeline_needs_a_mesh_and_one_source(weights):
    paint = get("hunyuan3d-2-paint")(weights_dir=str(weights))
    with pytest.raises(BackendError, match="paints a mesh you send, and got none"):
        paint.validate(JobRequest("hunyuan3d-2-paint", {}, images={"image": MUG.read_bytes()}))
    positions, faces = icosphere()
    with pytest.raises(BackendError, match="needs image or text"):
        paint.validate(JobRequest("hunyuan3d-2-paint", {}, mesh=check_input_mesh(positions, faces)))


def test_recenter_frames_the_object_with_a_fifth_of_its_size_around_it():
    picture = np.zeros((60, 80, 4), dtype=np.uint8)
    picture[10:30, 20:70] = (200, 40, 40, 255)  # the object: 50 wide, 20 tall
    framed = np.asarray(recenter(Image.fromarray(picture)))
    # 50 + 2 * 10 = 70 wide, 20 + 2 * 4 = 28 tall: a 70 square, the object in the middle.
    assert framed.shape == (70, 70, 4)
    rows, cols = np.nonzero(framed[..., 3])
    assert (cols.min(), cols.max() + 1) == (10, 60) and (rows.min(), rows.max() + 1) == (25, 45)
    assert (framed[rows, cols, :3] == (200, 40, 40)).all() and (framed[framed[..., 3] == 0, 3] == 0).all()
    with pytest.raises(BackendError, match="fully transparent"):
        recenter(Image.new("RGBA", (8, 8)))
