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
from backend.pipelines.hunyuan3d_v1.background import (
    frame_object,
    has_meaningful_alpha,
    prepare_condition_image,
    white_out_background,
)
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


def tiny_vae(channels: tuple[int, ...] = (16, 32)):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=channels, down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels), latent_channels=4, norm_num_groups=8, sample_size=32)


def tiny_vision(projection_dim: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_attention_heads=2,
                                                          num_hidden_layers=2, image_size=32, patch_size=8, projection_dim=projection_dim))


def save_half(model, folder: Path) -> None:
    model.to(torch.float16).save_pretrained(str(folder))


def save_full(model, folder: Path) -> None:
    """Some released parts are stored in float32 (mvd_lite's UNet, HunyuanDiT's text encoders)."""
    model.to(torch.float32).save_pretrained(str(folder))


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
    save_full(tiny_unet(HIDDEN), folder / "unet")
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
                                hidden_size=16, text_len=77, text_len_t5=256, activation_fn="gelu-approximate"), folder / "transformer")
    save_half(tiny_vae((8, 8, 8, 8)), folder / "vae")  # HunyuanDiT's pipeline assumes a VAE that scales by 8
    save_full(BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                   max_position_embeddings=80)), folder / "text_encoder")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "3d", ","]))
    BertTokenizer(str(vocab)).save_pretrained(str(folder / "tokenizer"))
    vocab.unlink()
    save_full(T5EncoderModel(T5Config(vocab_size=8, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)), folder / "text_encoder_2")
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


def run_pipeline(pipeline_class, weights: Path, memory: MemoryManager | None = None, events: list | None = None, **request):
    pipeline = pipeline_class(weights_dir=str(weights))
    params = {**FAST, **request.pop("params", {})}
    validated = pipeline.validate(JobRequest(pipeline.name, params, **request))
    sink = events if events is not None else []
    return pipeline.run(validated, JobContext(sink.append, lambda: False, SimpleNamespace(memory=memory or MemoryManager())))


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# -- the multiview models -------------------------------------------------------------------------

def test_grids_split_into_views_in_azimuth_order():
    # Each cell is filled with the azimuth (in steps of 60 degrees) the model draws there.
    layouts = {LiteMultiview: [[0, 1], [2, 3], [4, 5]], StdMultiview: [[0, 5], [1, 4], [2, 3]]}
    for model, layout in layouts.items():
        grid = Image.new("RGB", (2 * 4, 3 * 4))
        for row, cells in enumerate(layout):
            for col, azimuth in enumerate(cells):
                grid.paste((azimuth * 40, 0, 0), (col * 4, row * 4, col * 4 + 4, row * 4 + 4))
        assert [view.getpixel((1, 1))[0] // 40 for view in split_grid(grid, model.view_order)] == [0, 1, 2, 3, 4, 5]


def test_lite_guidance_is_per_view_and_fades_with_noise():
    assert guidance_ramp(999) == pytest.approx(5.9733, abs=1e-3)
    assert guidance_ramp(0) == pytest.approx(2 / 3)
    unconditional, conditional = torch.zeros(1, 4, 6, 4), torch.ones(1, 4, 6, 4)
    guided = LiteMultiview.guide(None, unconditional, conditional, 0.0, 1.5)
    per_cell = guided[0, 0, ::2, ::2] / (1.5 * 2 / 3)
    torch.testing.assert_close(per_cell, torch.tensor([[3.0, 2.5], [2.0, 1.5], [2.0, 2.5]]))
    torch.testing.assert_close(StdMultiview.guide(None, unconditional, conditional, 500.0, 2.0), torch.full((1, 4, 6, 4), 2.0))


def test_reference_attention_records_then_attends_to_the_reference(weights):
    from backend.pipelines.hunyuan3d_v1.components import load_diffusers_model
    from backend.pipelines.hunyuan3d_v1.multiview.reference_attention import (
        READ,
        WRITE,
        ReferenceBank,
        install_reference_attention,
    )

    unet = load_diffusers_model("UNet2DConditionModel", weights / "mvd_lite" / "unet").float()
    bank = ReferenceBank()
    assert install_reference_attention(unet, bank) == 4  # the self-attentions of 1 down, 1 middle and 2 up transformer blocks
    generator = torch.Generator().manual_seed(0)
    sample, reference = torch.randn(2, 4, 24, 16, generator=generator), torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 5, HIDDEN, generator=generator)
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=text).sample
        bank.mode = WRITE
        unet(reference, 10, encoder_hidden_states=text)
        assert {tuple(state.shape) for state in bank.states.values()} >= {(2, 256, 16)}  # 16x16 reference tokens at full size
        bank.mode = READ
        with_reference = unet(sample, 10, encoder_hidden_states=text).sample
    assert with_reference.shape == plain.shape
    assert not torch.allclose(with_reference, plain, atol=1e-4)


def test_views_are_reproducible_from_the_seed(weights):
    picture = {"images": {"image": png(object_picture())}}
    first = run_pipeline(Hunyuan3D1LitePipeline, weights, **picture)
    again = run_pipeline(Hunyuan3D1LitePipeline, weights, **picture)
    other = run_pipeline(Hunyuan3D1LitePipeline, weights, params={"seed": 7}, **picture)
    assert first.images["views"] == again.images["views"]
    assert first.images["views"] != other.images["views"]
    grid = decoded(first.images["views"])
    assert grid.size == (2 * FAST["view_size"], 3 * FAST["view_size"]) and grid.mode == "RGB"
    condition = decoded(first.images["input"])
    assert condition.size == (512, 512) and condition.mode == "RGBA"
    np.testing.assert_array_equal(first.mesh.positions, again.mesh.positions)


def test_stage_mode_gives_the_views_of_resident_mode(weights):
    picture = {"images": {"image": png(object_picture())}}
    events: list[dict] = []
    resident = run_pipeline(Hunyuan3D1StdPipeline, weights, MemoryManager(mode="resident"), **picture)
    staged = run_pipeline(Hunyuan3D1StdPipeline, weights, MemoryManager(mode="stage"), events, **picture)
    assert resident.images["views"] == staged.images["views"]
    steps = [event["step"] for event in events if event["stage"] == "multiview" and event["step"] is not None]
    assert steps == [0, 1, 2]
    staged_components = {event["memory_stats"]["stage"]: event["memory_stats"]["components"] for event in events if "memory_stats" in event}
    assert staged_components["multiview"] == ["mvd_std.unet"]
    assert set(staged_components["condition"]) == {"mvd_std.vae", "mvd_std.vision_encoder", "mvd_std.vision_encoder_2"}


def test_cancel_stops_between_denoising_steps(weights):
    from backend.errors import JobCancelled

    pipeline = Hunyuan3D1LitePipeline(weights_dir=str(weights))
    request = pipeline.validate(JobRequest(pipeline.name, {**FAST, "steps": 5}, images={"image": png(object_picture())}))
    events: list[dict] = []

    def cancelled() -> bool:
        return any(event["stage"] == "multiview" and event["step"] == 2 for event in events)

    with pytest.raises(JobCancelled):
        pipeline.run(request, JobContext(events.append, cancelled, SimpleNamespace(memory=MemoryManager())))
    assert max(event["step"] for event in events if event["stage"] == "multiview") == 2
    assert not any(event["stage"] in ("decode", "mesh") for event in events)


# -- background ------------------------------------------------------------------------------------

def test_an_alpha_channel_is_kept_and_the_object_framed():
    picture = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    picture.paste((250, 250, 250, 255), (20, 10, 60, 90))  # a near-white object: clamped to 235
    assert has_meaningful_alpha(picture) and not has_meaningful_alpha(picture.convert("RGB"))
    framed, method = prepare_condition_image(picture)
    assert method == "alpha" and framed.size == (512, 512) and framed.mode == "RGBA"
    pixels = np.asarray(framed)
    assert tuple(pixels[256, 256]) == (235, 235, 235, 255)
    assert pixels[2, 2, 3] == 0
    # Box 80 rows x 40 columns (upstream drops the last of each: 79 x 39), padded to int(79 * 1.15) = 90.
    opaque_rows = np.nonzero(pixels[:, 256, 3] > 128)[0]
    assert abs((opaque_rows.max() - opaque_rows.min() + 1) - 512 * 79 / 90) <= 2


def test_without_alpha_or_rembg_the_border_colour_is_removed(monkeypatch):
    from backend.pipelines.hunyuan3d_v1 import background

    monkeypatch.setenv("U2NET_HOME", "/nonexistent")
    assert not background.rembg_available()
    cut, method = background.cut_out(object_picture(96))
    assert method == "border"
    alpha = np.asarray(cut.getchannel("A"))
    assert alpha[53, 38] == 255 and alpha[2, 2] == 0 and alpha[53, 38] == alpha[53, 40]  # the stripe stays in the object
    with pytest.raises(BackendError, match="no object"):
        frame_object(white_out_background(Image.new("RGBA", (10, 10), (0, 0, 0, 0))))


# -- weights ----------------------------------------------------------------------------------------

def copy_tree(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_a_missing_component_gives_one_clear_error(weights, tmp_path):
    partial = copy_tree(weights, tmp_path / "partial")
    (partial / "mvd_std" / "vision_encoder_2" / "model.safetensors").unlink()
    (partial / "mvd_std" / "uc_text_emb_2.pt").unlink()
    pipeline = Hunyuan3D1StdPipeline(weights_dir=str(partial))
    report = pipeline.check_weights()
    assert not report.ready
    assert report.missing == ["tencent/Hunyuan3D-1: mvd_std/vision_encoder_2/model.safetensors",
                              "tencent/Hunyuan3D-1: mvd_std/uc_text_emb_2.pt"]
    assert report.download == f'hf download tencent/Hunyuan3D-1 --include "mvd_std/*" --local-dir "{partial}"'
    with pytest.raises(BackendError) as error:
        pipeline.validate(JobRequest(pipeline.name, {}, images={"image": png(object_picture())}))
    assert error.value.code == ErrorCode.WEIGHTS_MISSING
    assert "mvd_std/vision_encoder_2/model.safetensors" in error.value.message and "hf download" in error.value.hint

    # Pictures need no text-to-image weights; prompts do, and say how to get them.
    (partial / "mvd_std" / "uc_text_emb_2.pt").write_bytes((weights / "mvd_std" / "uc_text_emb_2.pt").read_bytes())
    (partial / "mvd_std" / "vision_encoder_2" / "model.safetensors").write_bytes(
        (weights / "mvd_std" / "vision_encoder_2" / "model.safetensors").read_bytes())
    import shutil

    shutil.rmtree(partial / "hunyuanDiT" / "text_encoder_2")
    assert pipeline.check_weights().ready
    pipeline.validate(JobRequest(pipeline.name, {}, images={"image": png(object_picture())}))
    with pytest.raises(BackendError) as error:
        pipeline.validate(JobRequest(pipeline.name, {}, text="a cat"))
    assert "Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled: text_encoder/config.json" not in error.value.message
    assert "text_encoder_2/model.safetensors" in error.value.message
    assert f'--local-dir "{partial / "hunyuanDiT"}"' in error.value.hint


def test_a_damaged_embedding_file_is_refused(weights, tmp_path):
    import pickle

    broken = copy_tree(weights / "mvd_std", tmp_path / "mvd_std")
    (broken / "uc_text_emb.pt").write_bytes(pickle.dumps({"not": "a tensor"}, protocol=2))
    with pytest.raises(BackendError) as error:
        StdMultiview(broken, {})
    assert error.value.code == ErrorCode.WEIGHTS_CORRUPT
    (broken / "uc_text_emb.pt").write_bytes(b"PK\x03\x04 an interrupted download")
    with pytest.raises(BackendError) as error:
        StdMultiview(broken, {})
    assert error.value.code == ErrorCode.WEIGHTS_CORRUPT and "uc_text_emb.pt" in error.value.message


def test_weights_are_found_in_the_hugging_face_cache(weights, hf_cache):
    assert not check_folders([MVD_LITE], None)[1].ready
    snapshot = hf_cache / "models--tencent--Hunyuan3D-1" / "snapshots" / "abc123"
    copy_tree(weights / "mvd_lite", snapshot / "mvd_lite")
    (hf_cache / "models--tencent--Hunyuan3D-1" / "refs").mkdir()
    (hf_cache / "models--tencent--Hunyuan3D-1" / "refs" / "main").write_text("abc123")
    checks, report = check_folders([MVD_LITE], None)
    assert report.ready and checks[0].path == snapshot / "mvd_lite"


def test_download_fetches_just_the_needed_folders(weights, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, local_dir=None, **_kwargs):
        calls.append((repo_id, allow_patterns, local_dir))
        for pattern in allow_patterns or [""]:
            name = pattern.rstrip("/*") or "hunyuanDiT"
            source = weights / name
            target = Path(local_dir) / (pattern.rstrip("/*"))
            if not target.exists():
                copy_tree(source, target)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    lines: list[str] = []
    paths = download("hunyuan3d-1-std", str(tmp_path / "w"), lines.append)
    assert calls == [("tencent/Hunyuan3D-1", ["mvd_std/*", "svrm/*"], str(tmp_path / "w"))]
    assert paths == [tmp_path / "w" / "mvd_std", tmp_path / "w" / "svrm"]
    assert "tencent/Hunyuan3D-1" in lines[0]
    download("hunyuandit", str(tmp_path / "w"), lines.append)
    assert calls[-1] == ("Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled", None, str(tmp_path / "w" / "hunyuanDiT"))
    assert check_folders([MVD_STD, HUNYUAN_DIT], str(tmp_path / "w"))[1].ready
    with pytest.raises(BackendError, match="nothing to download"):
        download("hunyuan3d-9", None, lines.append)


def test_official_defaults():
    for pipeline, guidance, view_size in ((Hunyuan3D1LitePipeline, 1.0, 320), (Hunyuan3D1StdPipeline, 2.0, 512)):
        defaults = {param.name: param.default for param in pipeline.params}
        assert defaults["steps"] == 50 and defaults["seed"] == 0 and defaults["max_faces"] == 120000
        assert defaults["text_steps"] == 25 and defaults["text_image_size"] == 1024 and defaults["resolution"] == 384
        assert defaults["guidance"] == guidance and defaults["view_size"] == view_size
        assert pipeline.inputs == ("image", "text")


# -- through the server ----------------------------------------------------------------------------

@pytest.mark.parametrize("memory, jobs", [
    ("resident", [("hunyuan3d-1-lite", "image"), ("hunyuan3d-1-std", "text")]),
    ("stage", [("hunyuan3d-1-lite", "text"), ("hunyuan3d-1-std", "image")]),
])
def test_end_to_end_through_the_server(weights, tmp_path, hf_cache, monkeypatch, memory, jobs):
    from conftest import BackendProcess

    from backend.protocol import Buffer

    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    backend = BackendProcess(tmp_path, "--weights", str(weights), "--device", "cpu", "--memory", memory)
    try:
        client = backend.client()
        for pipeline, source in jobs:
            header = {"op": "submit", "pipeline": pipeline, "params": FAST}
            buffers = []
            if source == "text":
                header["text"] = "a red ball"
            else:
                buffers = [Buffer.from_bytes("image", png(object_picture()))]
            reply = client.request(header, buffers).header
            assert reply["op"] == "accepted", reply
            result, events = client.until_done(reply["job"])
            assert result.op == "result", result.header
            assert result.header["mesh"]["faces"] > 100
            expected_images = ["input", "views"] + (["text_image"] if source == "text" else [])
            assert sorted(result.header["images"]) == sorted(expected_images)
            grid = decoded(result.buffer("image.views").to_bytes())
            assert grid.size == (2 * FAST["view_size"], 3 * FAST["view_size"])
            stages = [event.header["stage"] for event in events if event.op == "progress" and event.header.get("step") is not None]
            expected_stages = ["background", "condition", "multiview", "decode", "encode", "triplane", "mesh"]
            if source == "text":
                expected_stages.insert(0, "text_to_image")
            assert list(dict.fromkeys(stages)) == expected_stages
            modes = {event.header["memory_stats"]["mode"] for event in events if "memory_stats" in event.header}
            assert modes == {memory}
    finally:
        backend.stop()


def test_the_download_command_fetches_into_the_weights_folder(weights, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from backend.cli import main

    def fake_snapshot_download(repo_id, allow_patterns=None, local_dir=None, **_kwargs):
        copy_tree(weights / "svrm", Path(local_dir) / "svrm")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HY3D_HOME", str(tmp_path / "home"))  # where the agreement to the licence is remembered
    assert main(["download", "hunyuan3d-1-svrm", "--weights", str(tmp_path / "w"), "--accept-license"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "w" / "svrm")


# -- precision: the family's, not the file's -----------------------------------------------------


def test_every_part_computes_in_float16_on_a_gpu_even_where_its_file_is_float32(weights):
    from test_devices import A100, FakeProbe

    from backend.runtime import Runtime

    gib = 1 << 30
    gpu = Runtime.create(probe=FakeProbe(cuda=[A100]), smoke=lambda d, t: None, free_memory=lambda: (70 * gib, 80 * gib)).memory
    cpu = MemoryManager()
    for memory in (gpu, cpu):
        for pipeline in (Hunyuan3D1LitePipeline, Hunyuan3D1StdPipeline):
            pipeline(weights_dir=str(weights)).register_components(memory)
    on_gpu = {c["name"]: c for c in gpu.describe()["components"]}
    assert len(on_gpu) == 4 + 4 + 4 + 3  # lite, std, HunyuanDiT, SVRM
    assert {"mvd_lite.unet", "hunyuandit.text_encoder", "hunyuandit.text_encoder_2"} <= {
        name for name, c in on_gpu.items() if c["storage_dtype"] == "float32"}
    assert {c["compute_dtype"] for c in on_gpu.values()} == {"float16"}
    assert {c["compute_dtype"] for c in cpu.describe()["components"]} == {"float32"}
    assert "float16" in on_gpu["mvd_lite.unet"]["compute_dtype_why"]

    # A float32 file bound for a float16 device is converted once while loading and parked in float16.
    for name in ("mvd_lite.unet", "hunyuandit.text_encoder_2"):
        gpu.load(name)
        component = gpu.describe_component(name)
        assert component["placement"] == "parked" and component["parked_dtype"] == "float16"
        assert component["storage_dtype"] == "float32"
        module = gpu._components[name].module
        assert {p.dtype for p in module.parameters()} == {torch.float16} and {p.device.type for p in module.parameters()} == {"cpu"}
        # ... and cannot be called while parked: nothing computes float16 on the CPU by mistake.
        with pytest.raises(BackendError) as error:
            module(torch.zeros(1, dtype=torch.long))
        assert error.value.code == ErrorCode.INTERNAL and "parked" in error.value.message
