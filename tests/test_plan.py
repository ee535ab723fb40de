"""The plan before a job: memory mode, peak memory and time, against a real CPU job of a Hunyuan3D-2 model.

The model is a Hunyuan3D-2mini-fast of a few hundred MB of random float16 weights in the official
layout (``config.yaml`` and one combined ``model.fp16.safetensors``), written with the random
weights writer of benchmarks/h2_random_weights.py and loaded by the backend's real loading code,
so its float32 copies dominate the job's host memory and the comparison with the plan means
something. The plan and the job go through a real backend process (``serve``), whose memory is
a backend's alone.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BackendProcess
from PIL import Image

from backend.errors import BackendError
from backend.jobs import JobEngine
from backend.pipelines.base import JobRequest
from backend.protocol import Buffer
from backend.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from h2_random_weights import shapes, write_random_safetensors  # noqa: E402

MODEL = "hunyuan3d-2mini-fast"
DINO = {
    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 512,
    "image_size": 224, "initializer_range": 0.02, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4, "model_type": "dinov2",
    "num_attention_heads": 8, "num_channels": 3, "num_hidden_layers": 12, "patch_size": 14, "qkv_bias": True, "torch_dtype": "float32",
    "use_swiglu_ffn": True,
}
# A job small enough for two CPU cores: few steps, a coarse grid.
JOB = {"steps": 2, "octree_resolution": 24, "chunk_size": 8000, "max_faces": 2000, "remove_background": False}


def medium_config() -> dict:
    """The released 2mini layout at about a sixth of its size (the DiT at 0.75 of its width, fewer blocks)."""
    dit = {"in_channels": 64, "context_in_dim": DINO["hidden_size"], "hidden_size": 768, "mlp_ratio": 4.0, "num_heads": 12, "depth": 4,
           "depth_single_blocks": 8, "axes_dim": [64], "theta": 10000, "qkv_bias": True, "guidance_embed": True}
    vae = {"num_latents": 128, "embed_dim": 64, "num_freqs": 8, "include_pi": False, "heads": 8, "width": 512, "num_decoder_layers": 4,
           "qkv_bias": False, "qk_norm": True, "scale_factor": 1.0188137142395404}
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": dit},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": vae},
        "conditioner": {"target": "hy3dgen.shapegen.models.SingleImageEncoder",
                        "params": {"main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {"config": DINO, "image_size": 224}}}},
        "scheduler": {"target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler", "params": {"num_train_timesteps": 1000}},
        "image_processor": {"target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2", "params": {"size": 224, "border_ratio": 0.15}},
        "pipeline": {"target": "hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


def write_weights(root: Path) -> Path:
    from backend.pipelines.hunyuan3d_v2.conditioner import ImageConditioner
    from backend.pipelines.hunyuan3d_v2.config import parse_config
    from backend.pipelines.hunyuan3d_v2.dit import Hunyuan3DDiT
    from backend.pipelines.hunyuan3d_v2.vae import ShapeVAE, ShapeVAEConfig
    from backend.weights import HUNYUAN3D_2_MODELS

    folder = root / HUNYUAN3D_2_MODELS[MODEL][0].folder
    folder.mkdir(parents=True)
    raw = medium_config()
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = parse_config(raw, folder / "config.yaml")
    with torch.device("meta"):
        parts = {**shapes(ImageConditioner(config.conditioner), "conditioner."), **shapes(Hunyuan3DDiT(config.dit), "model."),
                 **shapes(ShapeVAE(ShapeVAEConfig.from_params(config.vae)), "vae.")}
    write_random_safetensors(folder / "model.fp16.safetensors", parts, seed=0)
    return root


def picture() -> bytes:
    image = Image.new("RGB", (96, 96), (240, 240, 240))
    image.paste((200, 40, 40), (24, 20, 72, 80))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_plan_of_a_cpu_job_predicts_its_peak_host_memory_and_then_its_time(tmp_path):
    weights = write_weights(tmp_path / "weights")
    assert 250e6 < (next(weights.glob("*/model.fp16.safetensors"))).stat().st_size < 500e6
    # A backend process of its own, so the host memory it starts with is a backend's, not a test run's.
    (tmp_path / "home").mkdir()
    backend = BackendProcess(tmp_path / "home", "--weights", str(weights), "--device", "cpu")
    try:
        client = backend.client()
        plan = client.request({"op": "plan", "pipeline": MODEL, "params": JOB, "inputs": ["image"]}).header
        assert (plan["op"], plan["mode"], plan["device"], plan["accelerator"]) == ("plan", "cpu", "cpu", None), plan
        weights_bytes = sum(c["compute_bytes"] for c in plan["components"])
        assert [c["placement"] for c in plan["components"]] == ["unloaded"] * 3
        assert weights_bytes > 0.5 * plan["host"]["peak_bytes"]  # the float32 weights dominate the job's memory
        assert plan["time"] is None and "has not run on cpu yet" in plan["time_unknown"]

        accepted = client.request({"op": "submit", "pipeline": MODEL, "params": JOB}, [Buffer.from_bytes("image", picture())])
        result, events = client.until_done(accepted.header["job"])
        assert result.op == "result", result.header
        measured = max(e.header["memory_stats"]["peak_host_rss_bytes"] for e in events if "memory_stats" in e.header)
        predicted = plan["host"]["peak_bytes"]
        print(f"host peak: planned {predicted / 1e9:.3f} GB, measured {measured / 1e9:.3f} GB ({measured / predicted - 1:+.1%})")
        assert abs(measured - predicted) <= 0.25 * predicted

        # The job's stage timings are recorded now: the plan has a time, the sampling stage scaled by the steps.
        again = client.request({"op": "plan", "pipeline": MODEL, "params": {**JOB, "steps": 4}, "inputs": ["image"]}).header
        expected, timings = again["time"], result.header["timings"]
        assert again["time_unknown"] is None and expected["scaled"] == {"sampling": "steps 2 -> 4"}
        assert expected["stages"]["sampling"] == pytest.approx(2 * timings["sampling"], abs=0.002)
        assert expected["seconds"] == pytest.approx(timings["total"] + timings["sampling"], abs=0.02)
        # The components stay ready in RAM after a CPU job, so the plan counts them as held.
        assert [c["placement"] for c in again["components"]] == ["ready"] * 3
    finally:
        backend.stop()


def test_a_plan_gets_the_errors_a_job_gets(tmp_path):
    engine = JobEngine(Runtime.create(device="cpu"), output_dir=None, weights_dir=str(tmp_path))
    with pytest.raises(BackendError) as missing:
        engine.plan(JobRequest(MODEL, {}, images={"image": None}))
    assert missing.value.code == "weights_missing" and "hf download tencent/Hunyuan3D-2mini" in missing.value.hint
    with pytest.raises(BackendError) as bad:
        engine.plan(JobRequest("nano", {"resolution": 5}, images={"image": None}))
    assert bad.value.code == "bad_parameter" and "resolution" in bad.value.message
    with pytest.raises(BackendError) as no_input:
        engine.plan(JobRequest("nano", {}))
    assert no_input.value.code == "bad_input"
