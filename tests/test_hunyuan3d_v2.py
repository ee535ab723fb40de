"""Hunyuan3D-2's conditioner, DiT and sampler against the official code (hy3dgen 2.0.2), on tiny random checkpoints.

Each checkpoint is built from the official classes with random weights and written in the
official layout (a folder with ``config.yaml`` and one combined ``model.fp16.safetensors`` of
``conditioner.*``, ``model.*`` and ``vae.*`` tensors, here stored in float32 so the comparison
is exact up to float32 rounding); ours loads it through the backend's real loading code.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hy3dgen_oracle import installed_conditioner_state, official_conditioner_state, shapegen_module
from PIL import Image
from safetensors.torch import save_file

from backend.errors import BackendError
from backend.memory import stored_size_and_dtype
from backend.memory.loading import WeightsError
from backend.pipelines.hunyuan3d_v2.config import read_config
from backend.pipelines.hunyuan3d_v2.loading import load_conditioner, load_dit
from backend.pipelines.hunyuan3d_v2.preprocess import order_views, prepare_picture, recenter, to_tensor
from backend.pipelines.hunyuan3d_v2.sampler import Guidance, initial_noise, sample, sigmas

LATENTS = 24  # tokens of the tiny latent set
CHANNELS = 8  # width of each latent token (64 in the released models)
DINO = {
    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "hidden_size": 32, "image_size": 56, "initializer_range": 0.02, "layer_norm_eps": 1e-6, "layerscale_value": 1.0,
    "mlp_ratio": 4, "model_type": "dinov2", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 14, "qkv_bias": True, "torch_dtype": "float32", "use_swiglu_ffn": True,
}
# v2-0 has twice mini's blocks of each kind; the tiny versions keep that ratio.
SIZES = {"v2-0": (2, 4), "mini": (1, 2)}


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, so no test sees the machine's."""
    import huggingface_hub.constants

    hub = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return hub


def tiny_config(size: str = "mini", guidance_embed: bool = False, turbo: bool = False, multiview: bool = False) -> dict:
    depth, single = SIZES[size]
    model = {"in_channels": CHANNELS, "context_in_dim": DINO["hidden_size"], "hidden_size": 32, "mlp_ratio": 4.0, "num_heads": 2,
             "depth": depth, "depth_single_blocks": single, "axes_dim": [16], "theta": 10000, "qkv_bias": True}
    if guidance_embed:
        model["guidance_embed"] = True
    encoder = {"type": "DinoImageEncoderMV" if multiview else "DinoImageEncoder",
               "kwargs": {"config": dict(DINO), "image_size": DINO["image_size"], **({"view_num": 4} if multiview else {})}}
    scheduler = ({"target": "hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler",
                  "params": {"num_train_timesteps": 1000, "pcm_timesteps": 100}} if turbo else
                 {"target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler", "params": {"num_train_timesteps": 1000}})
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": model},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE",
                "params": {"num_latents": LATENTS, "embed_dim": CHANNELS, "num_freqs": 8, "include_pi": False, "heads": 2, "width": 32,
                           "num_decoder_layers": 1, "qkv_bias": False, "qk_norm": True, "scale_factor": 1.0188137142395404}},
        "conditioner": {"target": "hy3dgen.shapegen.models.SingleImageEncoder", "params": {"main_image_encoder": encoder}},
        "scheduler": scheduler,
        "image_processor": {"target": "hy3dgen.shapegen.preprocessors." + ("MVImageProcessorV2" if multiview else "ImageProcessorV2"),
                            "params": {"size": 64, "border_ratio": 0.15}},
        "pipeline": {"target": "hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights of a sensible scale: norms and layer scales near 1, everything else small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_scale = param.dim() == 1 and any(word in name for word in ("norm", "lambda1", "scale", "ln_")) and not name.endswith("bias")
            param.copy_(1 + 0.1 * noise if is_scale else 0.15 * noise)


class Official:
    """The official modules of one tiny checkpoint, and the folder it was written to."""

    def __init__(self, folder: Path, config: dict, seed: int = 0):
        self.folder, self.config = folder, config
        conditioner_params = copy.deepcopy(config["conditioner"]["params"])
        self.conditioner = shapegen_module("models.conditioner").SingleImageEncoder(**conditioner_params).eval()
        self.dit = shapegen_module("models.denoisers").Hunyuan3DDiT(**config["model"]["params"]).eval()
        self.vae = shapegen_module("models.autoencoders").ShapeVAE(**config["vae"]["params"]).eval()
        for offset, module in enumerate((self.conditioner, self.dit, self.vae)):
            randomise(module, seed + offset)
        state = {f"conditioner.{k}": v for k, v in official_conditioner_state(self.conditioner).items()}
        state |= {f"model.{k}": v for k, v in self.dit.state_dict().items()}
        state |= {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.fp16.safetensors"))


def max_relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


def random_images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- conditioner --------------------------------------------------------------------------------

def test_conditioner_tokens_match_the_official_conditioner(tmp_path):
    official = Official(tmp_path / "dit", tiny_config())
    ours = load_conditioner(official.folder / "model.fp16.safetensors", read_config(official.folder))
    images = random_images(1)[:, 0]
    with torch.inference_mode():
        theirs = official.conditioner(image=images)["main"]
        mine = ours(images)
    assert mine.shape == theirs.shape == (1, 17, DINO["hidden_size"])
    assert max_relative_error(mine, theirs) <= 1e-4


def test_the_file_s_conditioner_weights_load_into_the_official_conditioner_under_the_installed_names():
    # benchmarks/h2_cpu.py hands the checkpoint's DINOv2 weights to hy3dgen's own loader this way.
    conditioner = shapegen_module("models.conditioner").SingleImageEncoder(**copy.deepcopy(tiny_config()["conditioner"]["params"]))
    randomise(conditioner, 5)
    state = conditioner.state_dict()
    mapped = installed_conditioner_state(conditioner, official_conditioner_state(conditioner))
    assert mapped.keys() == state.keys()
    assert all(torch.equal(mapped[key], state[key]) for key in state)


@pytest.mark.parametrize("views", [("front",), ("front", "back"), ("front", "left", "back", "right")])
def test_multiview_conditioner_matches_the_official_one_for_any_subset_with_the_front(tmp_path, views):
    official = Official(tmp_path / "mv", tiny_config(multiview=True))
    ours = load_conditioner(official.folder / "model.fp16.safetensors", read_config(official.folder))
    names, indices = order_views(dict.fromkeys(reversed(views)))
    assert names == list(views)
    images = random_images(len(views), seed=3)
    with torch.inference_mode():
        theirs = official.conditioner(image=images, view_idxs=[tuple(indices)])["main"]
        mine = ours(images, indices)
    assert mine.shape == theirs.shape == (1, 17 * len(views), DINO["hidden_size"])
    assert max_relative_error(mine, theirs) <= 1e-4


def test_views_without_the_front_or_with_unknown_names_are_refused():
    with pytest.raises(BackendError, match="front view"):
        order_views({"left": None, "back": None})
    with pytest.raises(BackendError, match="top"):
        order_views({"front": None, "top": None})


# -- DiT ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["v2-0", "mini"])
@pytest.mark.parametrize("guidance_embed", [False, True])
def test_dit_velocity_matches_the_official_dit(tmp_path, size, guidance_embed):
    official = Official(tmp_path / "dit", tiny_config(size, guidance_embed=guidance_embed))
    ours = load_dit(official.folder / "model.fp16.safetensors", read_config(official.folder))
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(2, LATENTS, CHANNELS, generator=generator)
    condition = torch.randn(2, 17, DINO["hidden_size"], generator=generator)
    t = torch.tensor([0.0, 0.37])
    guidance = torch.tensor([5.0, 5.0]) if guidance_embed else None
    with torch.inference_mode():
        theirs = official.dit(latents, t, {"main": condition}, guidance=guidance)
        mine = ours(latents, t, condition, guidance)
    assert mine.shape == theirs.shape == latents.shape
    assert max_relative_error(mine, theirs) <= 1e-4


def test_dit_keys_load_strictly(tmp_path):
    official = Official(tmp_path / "dit", tiny_config(guidance_embed=True))
    config = read_config(official.folder)
    plain = tiny_config()  # the same file read as a model without guidance embedding: 4 unexpected keys
    (official.folder / "config.yaml").write_text(yaml.safe_dump(plain))
    with pytest.raises(WeightsError, match=r"unexpected 4 key\(s\) guidance_in"):
        load_dit(official.folder / "model.fp16.safetensors", read_config(official.folder))
    assert load_dit(official.folder / "model.fp16.safetensors", config).config.guidance_embed


def test_parts_of_the_combined_file_are_views_of_one_memory_map(tmp_path):
    official = Official(tmp_path / "dit", tiny_config())
    path = official.folder / "model.fp16.safetensors"
    config = read_config(official.folder)
    conditioner, dit = load_conditioner(path, config), load_dit(path, config)
    for module in (conditioner, dit):
        (mapping,) = module.file_mappings
        assert all(mapping.owns(p) for p in module.parameters())
    # What the memory manager reads from the header for each part, before anything loads.
    assert stored_size_and_dtype([path], "model.")[0] == sum(p.numel() * 4 for p in dit.parameters())
    assert stored_size_and_dtype([path], "conditioner.")[0] == sum(p.numel() * 4 for p in conditioner.parameters())
    assert stored_size_and_dtype([path], "vae.")[0] == sum(p.numel() * 4 for p in official.vae.parameters())


# -- sampler ------------------------------------------------------------------------------------

class _PreparedImage:
    """Stands in for the official picture loader: hands over an already prepared picture tensor."""

    def __init__(self, image: torch.Tensor):
        self.image = image

    def __call__(self, _image, **_kwargs):
        return {"image": self.image, "mask": torch.ones_like(self.image[:, :1])}


@pytest.mark.parametrize(("turbo", "steps"), [(False, 6), (True, 5)])
def test_sampler_latents_match_the_official_pipeline_after_every_step(tmp_path, turbo, steps):
    schedulers, pipelines = shapegen_module("schedulers"), shapegen_module("pipelines")
    config = tiny_config("mini", guidance_embed=turbo, turbo=turbo)
    official = Official(tmp_path / "dit", config)
    scheduler_cls = getattr(schedulers, config["scheduler"]["target"].rsplit(".", 1)[1])
    image = random_images(1, seed=7)[:, 0]
    pipeline = pipelines.Hunyuan3DDiTFlowMatchingPipeline(
        vae=official.vae, model=official.dit, scheduler=scheduler_cls(**config["scheduler"]["params"]),
        conditioner=official.conditioner, image_processor=_PreparedImage(image), device="cpu", dtype=torch.float32)
    theirs: list[torch.Tensor] = []
    pipeline(image=image, num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(11),
             output_type="latent", enable_pbar=False, callback=lambda _i, _t, out: theirs.append(out.prev_sample.clone()),
             callback_steps=1)

    ours_config = read_config(official.folder)
    path = official.folder / "model.fp16.safetensors"
    conditioner, dit = load_conditioner(path, ours_config), load_dit(path, ours_config)
    mine: list[torch.Tensor] = []
    calls: list[int] = []
    dit.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        condition = conditioner(image)
        noise = initial_noise(11, (1, LATENTS, CHANNELS), torch.float32, torch.device("cpu"))
        final = sample(dit, condition, noise, ours_config.scheduler, steps, Guidance(5.0, embedded=turbo),
                       on_step=lambda _done, _total, latents: mine.append(latents.clone()))
    assert len(mine) == len(theirs) == steps
    for step, (a, b) in enumerate(zip(mine, theirs), start=1):
        assert max_relative_error(a, b) <= 1e-4, f"step {step}"
    assert torch.equal(final, mine[-1])
    # The flow-matching schedule's zero-length last step needs no model call.
    assert len(calls) == (steps if turbo else steps - 1)


def test_schedules_follow_the_official_ones():
    from backend.pipelines.hunyuan3d_v2.config import SchedulerConfig

    flow = sigmas(SchedulerConfig(), 5)
    assert flow.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # the last official step has zero length
    turbo = sigmas(SchedulerConfig(consistency=True, pcm_timesteps=100), 5)
    np.testing.assert_allclose(turbo.numpy(), [0, 0.199199, 0.399399, 0.599600, 0.799800, 1.0], atol=1e-6)


# -- preprocessing ------------------------------------------------------------------------------

def test_recenter_frames_the_alpha_box_with_the_border_on_white():
    pixels = np.zeros((100, 200, 4), dtype=np.uint8)
    pixels[20:60, 50:130] = (200, 10, 10, 255)  # an 80 x 40 opaque box
    framed = recenter(Image.fromarray(pixels, "RGBA"), 0.15)
    assert framed.shape == (200, 200, 3)
    red = np.all(framed == (200, 10, 10), axis=-1)
    rows, cols = np.nonzero(red)
    # The box's crop leaves out its last row and column (79 x 39), scaled so 79 px become int(200 * 0.85) = 170.
    assert cols.max() - cols.min() + 1 == 170 and abs(rows.max() - rows.min() + 1 - int(39 * 170 / 79)) <= 1
    assert np.all(framed[0, 0] == 255) and np.all(framed[-1, -1] == 255)
    prepared = to_tensor(prepare_picture(Image.fromarray(pixels, "RGBA"), read_config_processor()))
    assert prepared.shape == (1, 3, 512, 512) and prepared.min() >= -1 and prepared.max() <= 1


def test_framing_matches_the_official_image_processor():
    pytest.importorskip("cv2", reason="the official image processor needs OpenCV (in the test extra)")
    official = shapegen_module("preprocessors").ImageProcessorV2(512, 0.15)
    examples = Path(__file__).resolve().parents[1] / "examples"
    rng = np.random.default_rng(0)
    noisy = np.zeros((300, 220, 4), dtype=np.uint8)  # shrunk to fit, every pixel different
    noisy[5:295, 3:210] = rng.integers(0, 256, (290, 207, 4))
    tiny = np.zeros((400, 400, 4), dtype=np.uint8)  # enlarged about 5 times
    tiny[150:190, 160:230] = rng.integers(0, 256, (40, 70, 4))
    pictures = [Image.open(examples / f"{name}.png") for name in ("snowman", "mug")] + [Image.fromarray(a, "RGBA") for a in (noisy, tiny)]
    for picture in pictures:
        theirs = official(picture)["image"]
        ours = to_tensor(prepare_picture(picture, read_config_processor()))
        levels = (ours - theirs).abs() * 127.5
        # OpenCV rounds its fixed-point resampling; the differences are a few rounding levels at most.
        assert float(levels.max()) <= 3.01 and float(levels.mean()) <= 0.2


def read_config_processor():
    from backend.pipelines.hunyuan3d_v2.config import ImageProcessorConfig

    return ImageProcessorConfig()


def test_a_fully_transparent_picture_is_refused():
    with pytest.raises(BackendError, match="no object"):
        recenter(Image.new("RGBA", (32, 32)), 0.15)


# -- the pipelines ------------------------------------------------------------------------------

def weights_folder(root: Path, model: str, multiview: bool = False, seed: int = 0) -> Path:
    """``root`` laid out as ``hf download --local-dir root`` leaves it, for ``model`` (and its turbo VAE when it has one)."""
    from backend.weights import HUNYUAN3D_2_MODELS

    dit_folder, vae_folder = HUNYUAN3D_2_MODELS[model]
    turbo, guidance_embed = model.endswith("-turbo"), not model.endswith(("2", "mini", "mv"))
    official = Official(root / dit_folder.folder, tiny_config("mini", guidance_embed, turbo, multiview), seed)
    if turbo:
        vae_root = root / vae_folder.folder
        vae_root.mkdir()
        (vae_root / "config.yaml").write_text(yaml.safe_dump(official.config["vae"]))
        save_file({k: v.contiguous() for k, v in official.vae.state_dict().items()}, str(vae_root / "model.fp16.safetensors"))
    return root


def object_picture(size: int = 80, colour=(200, 30, 30)) -> bytes:
    import io

    picture = Image.new("RGB", (size, size), (235, 235, 235))
    pixels = np.asarray(picture).copy()
    yy, xx = np.mgrid[:size, :size]
    pixels[(yy - size * 0.5) ** 2 + (xx - size * 0.45) ** 2 < (size * 0.3) ** 2] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


FAST = {"octree_resolution": 32, "chunk_size": 4096, "max_faces": 2000}


def run_pipeline(model: str, weights: Path, events: list | None = None, cancel_after: str | None = None, memory=None, **request):
    from types import SimpleNamespace

    from backend import pipelines
    from backend.memory import MemoryManager
    from backend.pipelines.base import JobContext, JobRequest

    pipeline = pipelines.get(model)(weights_dir=str(weights))
    params = {**FAST, **request.pop("params", {})}
    validated = pipeline.validate(JobRequest(model, params, **request))
    sink = events if events is not None else []
    cancelled = (lambda: any(e.get("stage") == cancel_after and e.get("step") == 2 for e in sink)) if cancel_after else (lambda: False)
    return pipeline.run(validated, JobContext(sink.append, cancelled, SimpleNamespace(memory=memory or MemoryManager())))


def test_the_catalogue_has_every_model_with_the_official_defaults():
    from backend import pipelines

    for family in ("hunyuan3d-2", "hunyuan3d-2mini", "hunyuan3d-2mv"):
        for variant in ("", "-fast", "-turbo"):
            cls = pipelines.get(family + variant)
            defaults = {p.name: p.default for p in cls.params}
            turbo = variant == "-turbo"
            assert defaults["steps"] == (5 if turbo else 50) and defaults["guidance"] == 5.0
            assert defaults["octree_resolution"] == (380 if turbo else 384) and defaults["chunk_size"] == 8000
            assert defaults["volume_decoder"] == ("flashvdm" if turbo else "plain") and defaults["max_faces"] == 40000
            assert cls.inputs == (("image", "left", "back", "right", "text") if family.endswith("mv") else ("image", "text"))
    assert pipelines.AUTO_PREFERENCE[:2] == ("hunyuan3d-2.1", "hunyuan3d-2-turbo")


def test_missing_weights_are_named_with_the_download_command(tmp_path):
    from backend import pipelines
    from backend.pipelines.base import JobRequest

    pipeline = pipelines.get("hunyuan3d-2mini-turbo")(weights_dir=str(tmp_path))
    report = pipeline.check_weights()
    assert not report.ready
    assert report.missing == [f"tencent/Hunyuan3D-2mini: {folder}/{name}" for folder in ("hunyuan3d-dit-v2-mini-turbo", "hunyuan3d-vae-v2-mini-turbo")
                              for name in ("config.yaml", "model.fp16.safetensors")]
    assert report.download == ('hf download tencent/Hunyuan3D-2mini --include "hunyuan3d-dit-v2-mini-turbo/config.yaml" '
                               '"hunyuan3d-dit-v2-mini-turbo/model.fp16.safetensors" "hunyuan3d-vae-v2-mini-turbo/config.yaml" '
                               f'"hunyuan3d-vae-v2-mini-turbo/model.fp16.safetensors" --local-dir "{tmp_path}"')
    with pytest.raises(BackendError) as error:
        pipeline.validate(JobRequest(pipeline.name, {}, images={"image": object_picture()}))
    assert error.value.code == "weights_missing" and "hf download tencent/Hunyuan3D-2mini" in error.value.hint
    # Plain decoding uses the DiT folder's own VAE, so the turbo VAE is not needed for it.
    weights_folder(tmp_path, "hunyuan3d-2mini-turbo")
    for path in (tmp_path / "hunyuan3d-vae-v2-mini-turbo").iterdir():
        path.unlink()
    pipeline.validate(JobRequest(pipeline.name, {"volume_decoder": "plain"}, images={"image": object_picture()}))
    with pytest.raises(BackendError, match="hunyuan3d-vae-v2-mini-turbo"):
        pipeline.validate(JobRequest(pipeline.name, {}, images={"image": object_picture()}))


def test_a_pipeline_refuses_a_folder_of_the_wrong_kind(tmp_path):
    weights = weights_folder(tmp_path, "hunyuan3d-2mini")
    (weights / "hunyuan3d-dit-v2-mini").rename(weights / "hunyuan3d-dit-v2-mv")
    with pytest.raises(BackendError, match="not a multiview model"):
        run_pipeline("hunyuan3d-2mv", weights, images={"image": object_picture()}, params={"steps": 2})


def test_sampling_progress_is_reported_per_step_and_cancel_stops_between_steps(tmp_path):
    from backend.errors import JobCancelled

    weights = weights_folder(tmp_path, "hunyuan3d-2mini")
    events: list = []
    with pytest.raises(JobCancelled):
        run_pipeline("hunyuan3d-2mini", weights, events, cancel_after="sampling", images={"image": object_picture()}, params={"steps": 6})
    steps = [e["step"] for e in events if e.get("stage") == "sampling" and e.get("step") is not None]
    assert steps == [0, 1, 2]
    assert [e["stage"] for e in events if e.get("step") is not None][:4] == ["background", "background", "condition", "condition"]


def _needs_the_decoder():
    """The ShapeVAE and volume decoding modules (vae.py, volume.py) are developed separately from this file's models."""
    pytest.importorskip("backend.pipelines.hunyuan3d_v2.volume", reason="needs the ShapeVAE decoder (vae.py, volume.py)")


@pytest.mark.parametrize("model", ["hunyuan3d-2mini-turbo", "hunyuan3d-2mini"])
def test_a_picture_becomes_a_mesh_on_tiny_weights(tmp_path, model):
    _needs_the_decoder()
    from backend.memory import MemoryManager

    weights = weights_folder(tmp_path, model)
    events: list = []
    memory = MemoryManager()
    output = run_pipeline(model, weights, events, memory=memory, images={"image": object_picture()},
                          params={"steps": 3, "octree_resolution": 24})
    assert output.mesh.face_count > 0
    # Three components, each with its block list: 2 ViT layers, 1 + 2 DiT blocks, 1 VAE decoder layer.
    vae = "hunyuan3d-vae-v2-mini-turbo" if model.endswith("turbo") else "hunyuan3d-dit-v2-mini.vae"
    folder = "hunyuan3d-dit-v2-mini" + ("-turbo" if model.endswith("turbo") else "")
    blocks = {name: len(memory._component(name).block_slots) for name in (f"{folder}.conditioner", f"{folder}.dit", vae)}
    assert list(blocks.values()) == [2, 3, 1]
    assert sorted(output.images) == ["input"]
    stages = [e["stage"] for e in events if e.get("step") is not None]
    assert list(dict.fromkeys(stages)) == ["background", "condition", "sampling", "decoding", "mesh"]
    assert output.info["latents"] == [1, LATENTS, CHANNELS]


def test_a_picture_becomes_a_mesh_in_bfloat16_on_a_cpu_with_native_bfloat16(tmp_path):
    """``--precision bfloat16`` on a CPU with AVX512-BF16/AMX: every stage runs in bfloat16 (the
    picture's antialiased resize, which the CPU lacks in bfloat16, in float32)."""
    _needs_the_decoder()
    from backend.devices import DeviceInfo, PrecisionPolicy
    from backend.memory import MemoryManager

    model = "hunyuan3d-2mini-turbo"
    memory = MemoryManager(PrecisionPolicy(DeviceInfo("cpu", name="CPU", native_bf16=True), "bfloat16"))
    output = run_pipeline(model, weights_folder(tmp_path, model), memory=memory, images={"image": object_picture()},
                          params={"steps": 2, "octree_resolution": 24})
    assert output.mesh.face_count > 0
    assert {memory.compute_dtype(name) for name in memory._components} == {torch.bfloat16}


def test_the_plan_and_the_decoding_stage_count_the_grids_and_one_call_at_the_job_s_resolution(tmp_path):
    _needs_the_decoder()
    from backend import pipelines
    from backend.memory import MemoryManager
    from backend.pipelines.base import JobRequest
    from backend.pipelines.hunyuan3d_v2.vae import ShapeVAEConfig
    from backend.pipelines.hunyuan3d_v2.volume import decode_memory_bytes
    from backend.planning import plan_job

    model = "hunyuan3d-2mini-turbo"
    weights = weights_folder(tmp_path, model)
    pipeline = pipelines.get(model)(weights_dir=str(weights))
    vae_config = ShapeVAEConfig.from_params(tiny_config("mini", turbo=True)["vae"])
    memory = MemoryManager()
    vae_bytes = {}
    for octree in (64, 380):
        request = JobRequest(model, {"octree_resolution": octree, "chunk_size": 2000}, images={"image": None})
        plan = plan_job(pipeline, request, memory, None)
        vae_bytes[octree] = next(c["activation_bytes"] for c in plan["components"] if c["name"] == "hunyuan3d-vae-v2-mini-turbo")
        # float32 on the CPU: 4 bytes a value.
        assert vae_bytes[octree] == max(256 << 20, decode_memory_bytes(vae_config, octree, 2000, 4))
    assert vae_bytes[64] == 256 << 20  # a small grid of a tiny model: the floor
    assert vae_bytes[380] == 381**3 * 8 + (2000 * (vae_config.width * 16 + 64) + vae_config.num_latents * vae_config.width * 12) * 4

    # A job registers the VAE with its own parameters' figure, and its stage runs with it.
    for chunk_size in (1_000_000, 4096):
        run_pipeline(model, weights, memory=memory, images={"image": object_picture()},
                     params={"steps": 1, "octree_resolution": 24, "chunk_size": chunk_size})
        vae = memory._component("hunyuan3d-vae-v2-mini-turbo")
        assert memory._default_activation([vae]) == max(256 << 20, decode_memory_bytes(vae_config, 24, chunk_size, 4))
    assert memory._default_activation([vae]) == 256 << 20 < decode_memory_bytes(vae_config, 24, 1_000_000, 4)


def test_the_multiview_model_takes_any_views_with_the_front(tmp_path):
    _needs_the_decoder()
    weights = weights_folder(tmp_path, "hunyuan3d-2mv-turbo", multiview=True)
    images = {"image": object_picture(), "back": object_picture(colour=(30, 30, 200))}
    output = run_pipeline("hunyuan3d-2mv-turbo", weights, images=images, params={"steps": 2, "octree_resolution": 24})
    assert sorted(output.images) == ["input", "input_back"] and output.mesh.face_count > 0


def test_a_prompt_needs_hunyuandit_and_is_not_taken_with_a_picture(tmp_path):
    from backend import pipelines
    from backend.pipelines.base import JobRequest

    weights = weights_folder(tmp_path, "hunyuan3d-2mini")
    pipeline = pipelines.get("hunyuan3d-2mini")(weights_dir=str(weights))
    report = pipeline.check_weights()
    assert report.ready and "text prompts also need HunyuanDiT" in report.where
    with pytest.raises(BackendError) as error:
        pipeline.validate(JobRequest(pipeline.name, {}, text="a teapot"))
    assert error.value.code == "weights_missing" and "Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled" in error.value.hint
    with pytest.raises(BackendError, match="not both"):
        pipeline.validate(JobRequest(pipeline.name, {}, text="a teapot", images={"image": object_picture()}))


def test_full_size_modules_have_the_released_checkpoints_tensors():
    """Tensor and parameter counts of the released v2-0 and mini files (recorded from their headers)."""
    from backend.pipelines.hunyuan3d_v2.conditioner import ImageConditioner
    from backend.pipelines.hunyuan3d_v2.config import ConditionerConfig, DinoConfig, DiTConfig
    from backend.pipelines.hunyuan3d_v2.dit import Hunyuan3DDiT

    def counts(module: torch.nn.Module) -> tuple[int, int]:
        state = module.state_dict()
        return len(state), sum(t.numel() for t in state.values())

    with torch.device("meta"):
        assert counts(ImageConditioner(ConditionerConfig(DinoConfig()))) == (727, 1_136_480_768)
        assert counts(Hunyuan3DDiT(DiTConfig())) == (652, 1_113_274_432)
        assert counts(Hunyuan3DDiT(DiTConfig(depth=8, depth_single_blocks=16))) == (332, 559_196_224)
        assert counts(Hunyuan3DDiT(DiTConfig(guidance_embed=True))) == (656, 1_113_274_432 + 1_312_768)


def _cli(tmp_path, *args):
    import subprocess
    import sys

    from conftest import backend_env

    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, env=backend_env(tmp_path), timeout=300)


def test_generate_takes_named_views_from_the_command_line(tmp_path):
    _needs_the_decoder()
    weights = weights_folder(tmp_path / "weights", "hunyuan3d-2mv-turbo", multiview=True)
    (tmp_path / "front.png").write_bytes(object_picture())
    (tmp_path / "back.png").write_bytes(object_picture(colour=(30, 30, 200)))
    out = tmp_path / "out.glb"
    proc = _cli(tmp_path, "generate", "--model", "hunyuan3d-2mv-turbo", "--image", str(tmp_path / "front.png"),
                "--view", f"back={tmp_path / 'back.png'}", "--weights", str(weights), "--device", "cpu", "--steps", "2",
                "--set", "octree_resolution=24", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr and "sampling" in proc.stderr


def test_a_malformed_view_is_one_clear_error(tmp_path):
    proc = _cli(tmp_path, "generate", "--model", "hunyuan3d-2mv", "--view", "back", "-o", str(tmp_path / "out.glb"))
    assert proc.returncode == 1 and "error: --view 'back': expected NAME=PATH" in proc.stderr
    (tmp_path / "front.png").write_bytes(object_picture())
    proc = _cli(tmp_path, "generate", "--model", "hunyuan3d-2mv", "--image", str(tmp_path / "front.png"),
                "--view", f"top={tmp_path / 'front.png'}", "-o", str(tmp_path / "o.glb"))
    assert proc.returncode == 1 and "error: hunyuan3d-2mv does not take top" in proc.stderr, proc.stderr


def test_download_fetches_the_dit_folder_and_the_turbo_vae(tmp_path, monkeypatch):
    import huggingface_hub

    from backend.weights import download

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, local_dir=None, **_kwargs):
        calls.append((repo_id, allow_patterns, local_dir))
        weights_folder(Path(local_dir), "hunyuan3d-2mini-turbo")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    paths = download("hunyuan3d-2mini-turbo", str(tmp_path), lambda _line: None)
    assert calls == [("tencent/Hunyuan3D-2mini", ["hunyuan3d-dit-v2-mini-turbo/config.yaml", "hunyuan3d-dit-v2-mini-turbo/model.fp16.safetensors",
                                                  "hunyuan3d-vae-v2-mini-turbo/config.yaml", "hunyuan3d-vae-v2-mini-turbo/model.fp16.safetensors"],
                      str(tmp_path))]
    assert paths == [tmp_path / "hunyuan3d-dit-v2-mini-turbo", tmp_path / "hunyuan3d-vae-v2-mini-turbo"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.pop("scheduler"), "no 'scheduler' section"),
    (lambda c: c["conditioner"]["params"]["main_image_encoder"].update(type="CLIPImageEncoder"), "conditioner type 'CLIPImageEncoder'"),
    (lambda c: c["conditioner"]["params"]["main_image_encoder"]["kwargs"].update(image_size=224), "trained at 56 px"),
    (lambda c: c["model"]["params"].update(depth="sixteen"), "model.params.depth = 'sixteen' is not an integer"),
    (lambda c: c["model"]["params"].update(num_heads=5), "not a multiple of num_heads 5"),
])
def test_a_config_the_models_cannot_follow_is_refused_with_the_field(tmp_path, change, message):
    config = tiny_config()
    change(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(WeightsError, match=message):
        read_config(tmp_path)


def test_weights_are_found_in_the_hugging_face_cache(tmp_path, hf_cache):
    from backend import pipelines

    pipeline = pipelines.get("hunyuan3d-2mini")()
    assert not pipeline.check_weights().ready
    repo = hf_cache / "models--tencent--Hunyuan3D-2mini"
    weights_folder(repo / "snapshots" / "abc123", "hunyuan3d-2mini")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    report = pipeline.check_weights()
    assert report.ready and str(repo / "snapshots" / "abc123" / "hunyuan3d-dit-v2-mini") in report.where
