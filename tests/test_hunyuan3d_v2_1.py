"""Hunyuan3D-2.1 DiT: the released key map, parity with the official code, sparse experts, checkpoint loading.

The golden tensors in tests/data/h21_* come from the official 2.1 code run by
tools/make_h21_fixtures.py on a tiny random DiT with the release's structure.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_hunyuan3d_v2 import CHANNELS, DINO, LATENTS, hf_cache, object_picture, randomise, run_pipeline  # noqa: F401 - hf_cache: autouse

from backend.memory import MemoryManager, WeightsError, load_torch_module
from backend.pipelines.hunyuan3d_v2_1 import DiT21Config, ExpertTraffic, HunyuanDiT21, MoEFeedForward, load_dit

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "h21_tiny_dit.ckpt"
RELEASED_DIT_PARAMETERS = 3_050_758_720


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a busy machine, threads waiting for each other cost more than they bring."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture_record() -> dict:
    return json.loads((DATA / "h21_fixtures.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(DATA / "h21_golden.safetensors")


@pytest.fixture(scope="module")
def tiny_dit(fixture_record) -> HunyuanDiT21:
    return load_dit(CHECKPOINT, DiT21Config.from_params(fixture_record["params"]))


def assert_close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Max abs diff <= 1e-4 of the reference's scale (float32)."""
    assert ours.shape == reference.shape, what
    scale = max(reference.abs().max().item(), 1.0)
    difference = (ours - reference).abs().max().item()
    assert difference <= 1e-4 * scale, f"{what}: max abs diff {difference:.3g} (scale {scale:.3g})"


# -- the released model -----------------------------------------------------------------------


def test_full_size_dit_matches_the_released_key_map():
    released = {key: tuple(shape) for key, shape in json.loads((DATA / "h21_dit_state_dict.json").read_text()).items()}
    with torch.device("meta"):
        model = HunyuanDiT21()
    ours = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert sorted(set(released) - set(ours)) == []
    assert sorted(set(ours) - set(released)) == []
    assert {key: shape for key, shape in ours.items() if released[key] != shape} == {}
    assert len(ours) == 752
    assert sum(math.prod(shape) for shape in ours.values()) == RELEASED_DIT_PARAMETERS
    assert not list(model.buffers())


def test_released_config_options_are_read_and_others_refused():
    released = {"input_size": 4096, "in_channels": 64, "hidden_size": 2048, "context_dim": 1024, "depth": 21,
                "num_heads": 16, "qk_norm": True, "text_len": 1370, "with_decoupled_ca": False,
                "use_attention_pooling": False, "qk_norm_type": "rms", "qkv_bias": False, "use_pos_emb": False,
                "num_moe_layers": 6, "num_experts": 8, "moe_top_k": 2}
    assert DiT21Config.from_params(released) == DiT21Config()
    with pytest.raises(ValueError, match=r"use_pos_emb=True \(supported: False\)"):
        DiT21Config.from_params({**released, "use_pos_emb": True})
    with pytest.raises(ValueError, match="unknown .*guidance_embed"):
        DiT21Config.from_params({**released, "guidance_embed": True})
    with pytest.raises(ValueError, match="moe_top_k"):
        DiT21Config(num_experts=2, moe_top_k=3)


def test_blocks_have_skips_after_the_middle_and_experts_in_the_last_six():
    config = DiT21Config()
    assert [i for i in range(21) if config.has_skip(i)] == list(range(11, 21))
    assert [i for i in range(21) if config.uses_moe(i)] == list(range(15, 21))


# -- parity with the official code ---------------------------------------------------------------


def test_forward_matches_the_official_code_block_by_block(tiny_dit, golden):
    outputs: dict[int, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda _m, _a, out, i=i: outputs.__setitem__(i, out))
             for i, block in enumerate(tiny_dit.blocks)]
    try:
        with torch.inference_mode():
            velocity = tiny_dit(golden["forward.latents"], golden["forward.t"], golden["forward.context"])
    finally:
        for hook in hooks:
            hook.remove()
    assert len(outputs) == tiny_dit.config.depth
    for index, output in outputs.items():
        assert_close(output, golden[f"forward.block.{index}"], f"block {index}")
    assert_close(velocity, golden["forward.velocity"], "velocity")


def test_sampler_steps_match_the_official_pipeline(tiny_dit, golden, fixture_record):
    """The official loop: sigmas 0 -> 1, classifier-free guidance on a doubled batch, Euler steps."""
    steps, scale = fixture_record["sampler"]["steps"], fixture_record["sampler"]["guidance_scale"]
    sigmas = torch.from_numpy(np.linspace(0, 1, steps)).float()
    sigmas_next = torch.cat([sigmas[1:], torch.ones(1)])
    sample, condition = golden["sampler.noise"], golden["sampler.context"]
    context = torch.cat([condition, torch.zeros_like(condition)])
    with torch.inference_mode():
        for step in range(steps):
            t = (sigmas[step] * 1000 / 1000).expand(2)  # the pipeline hands the model timestep / 1000
            assert torch.equal(t[:1], golden[f"sampler.t.{step}"])
            cond, uncond = tiny_dit(torch.cat([sample, sample]), t, context).chunk(2)
            sample = sample + (sigmas_next[step] - sigmas[step]) * (uncond + scale * (cond - uncond))
            assert_close(sample, golden[f"sampler.latents.{step}"], f"latents after step {step}")


# -- mixture of experts --------------------------------------------------------------------------


def skewed_moe(seed: int = 0) -> tuple[MoEFeedForward, torch.Tensor]:
    """8 experts, top-2, whose gate never picks experts 5-7 for positive tokens."""
    generator = torch.Generator().manual_seed(seed)
    moe = MoEFeedForward(dim=32, inner_dim=64, num_experts=8, top_k=2).eval()
    with torch.no_grad():
        for parameter in moe.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        moe.gate.weight[:5] = torch.rand(5, 32, generator=generator)
        moe.gate.weight[5:] = -1.0
    tokens = torch.rand(3, 50, 32, generator=generator)
    return moe, tokens


def test_sparse_experts_equal_the_dense_computation():
    generator = torch.Generator().manual_seed(1)
    moe = MoEFeedForward(dim=32, inner_dim=64, num_experts=8, top_k=2).eval()
    with torch.no_grad():
        for parameter in moe.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    tokens = torch.randn(2, 333, 32, generator=generator)
    with torch.inference_mode():
        sparse, dense = moe(tokens), moe(tokens, dense=True)
    assert (sparse - dense).abs().max().item() <= 1e-5
    skewed, positive = skewed_moe()
    with torch.inference_mode():
        assert (skewed(positive) - skewed(positive, dense=True)).abs().max().item() <= 1e-5


def test_only_routed_experts_run_and_their_bytes_are_counted():
    moe, tokens = skewed_moe()
    with torch.inference_mode(), ExpertTraffic(moe) as traffic:
        moe(tokens)
    _weights, chosen = moe.gate(tokens.reshape(-1, 32))
    routed = sorted(set(chosen.flatten().tolist()))
    assert routed and max(routed) < 5
    expert_bytes = sum(p.numel() * p.element_size() for p in moe.experts[0].parameters())
    assert traffic.calls == {("", index): 1 for index in routed}
    assert traffic.used_bytes == len(routed) * expert_bytes
    assert traffic.dense_bytes == 8 * expert_bytes
    assert traffic.used_fraction == len(routed) / 8


def test_expert_traffic_of_a_dit_forward(tiny_dit, golden):
    with torch.inference_mode(), ExpertTraffic(tiny_dit) as traffic:
        tiny_dit(golden["forward.latents"], golden["forward.t"], golden["forward.context"])
    moe_layers = [f"blocks.{i}.moe" for i in range(tiny_dit.config.depth) if tiny_dit.config.uses_moe(i)]
    assert {layer for layer, _expert in traffic.calls} == set(moe_layers)
    assert set(traffic.calls.values()) == {1}
    expert_bytes = sum(p.numel() * p.element_size() for p in tiny_dit.blocks[-1].moe.experts[0].parameters())
    assert traffic.used_bytes == len(traffic.calls) * expert_bytes
    assert traffic.dense_bytes == len(moe_layers) * tiny_dit.config.num_experts * expert_bytes


def test_stream_units_run_in_their_listed_order_and_hold_the_weights(tiny_dit, golden):
    units = tiny_dit.stream_units()
    in_units = [id(p) for unit in units for p in unit.parameters()]
    assert len(in_units) == len(set(in_units)), "a parameter is in two units"
    called: list[int] = []
    hooks = [unit.register_forward_pre_hook(lambda _m, _a, i=i: called.append(i)) for i, unit in enumerate(units)]
    try:
        with torch.inference_mode():
            tiny_dit(golden["forward.latents"], golden["forward.t"], golden["forward.context"])
    finally:
        for hook in hooks:
            hook.remove()
    assert called == sorted(set(called)), "units ran out of their listed order or twice"
    experts = {id(expert) for block in tiny_dit.blocks if hasattr(block, "moe") for expert in block.moe.experts}
    assert {i for i, unit in enumerate(units) if id(unit) not in experts} <= set(called)
    with torch.device("meta"):
        released = HunyuanDiT21()
    streamed = sum(p.numel() for unit in released.stream_units() for p in unit.parameters())
    assert RELEASED_DIT_PARAMETERS - streamed < 0.012 * RELEASED_DIT_PARAMETERS  # the rest: embedders, norms, gates


class RecordingSide:
    """The stream's copy engine, copying at once and recording the storage of every tensor it copied."""

    def __init__(self):
        self.copied: list[int] = []

    def copy(self, start):
        copies = start()
        self.copied += [copy.data_ptr() for copy in copies]
        return copies, None

    def use(self, copies, ready):
        pass

    def drain(self):
        pass


def test_stream_mode_copies_only_the_experts_a_token_was_routed_to(fixture_record, golden):
    from backend.memory.component import Component
    from backend.memory.streaming import BlockStreamer
    from backend.memory.transfer import Transfers

    dit = load_dit(CHECKPOINT, DiT21Config.from_params(fixture_record["params"]))
    moe_blocks = [(index, block) for index, block in enumerate(dit.blocks) if hasattr(block, "moe")]
    shunned = {}
    with torch.no_grad():
        for layer, (index, block) in enumerate(moe_blocks):
            # The gate sees LayerNorm(x) = gamma * xhat + beta with sum(xhat) = 0, so the row c / gamma
            # scores every token c * sum(beta / gamma): a constant, made far below the other scores.
            expert = layer % len(block.moe.experts)
            constant = (block.norm3.bias / block.norm3.weight).sum()
            block.moe.gate.weight[expert] = -100 * constant.sign() / block.norm3.weight
            shunned[(f"blocks.{index}.moe", expert)] = block.moe.experts[expert]
    inputs = (golden["forward.latents"], golden["forward.t"], golden["forward.context"])
    with torch.inference_mode(), ExpertTraffic(dit) as traffic:
        resident = dit(*inputs)
    component = Component("dit", lambda: dit, "float32", (), HunyuanDiT21.stream_units, None, "float32")
    component.attach(dit, torch.float32)
    side, transfers = RecordingSide(), Transfers()
    try:
        with torch.inference_mode(), BlockStreamer(component, torch.device("cpu"), torch.float32, transfers, side=side):
            streamed = [dit(*inputs) for _ in range(2)]  # twice, as a denoising loop calls it
    finally:
        component.unload()
    for output in streamed:
        assert (output - resident).abs().max().item() == 0.0
    experts = {(f"blocks.{i}.moe", e): expert for i, block in enumerate(dit.blocks) if hasattr(block, "moe")
               for e, expert in enumerate(block.moe.experts)}
    copied = {key for key, expert in experts.items() if expert.net[0].proj.weight.data_ptr() in side.copied}
    assert copied == set(traffic.calls), "an expert was copied that no token chose, or a chosen one was not"
    assert copied == set(experts) - set(shunned), "the gate routes to every expert but the shunned one of each layer"
    assert transfers.on_demand_bytes == 2 * traffic.used_bytes
    assert transfers.on_demand_dense_bytes == 2 * traffic.dense_bytes


# -- loading the .ckpt ---------------------------------------------------------------------------


def mapped_files_at(address: int) -> list[str]:
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(n, 16) for n in fields[0].split("-"))
        if start <= address < end:
            found.append(fields[-1])
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_weights_stay_in_the_memory_mapped_file(tiny_dit, tmp_path):
    assert mapped_files_at(tiny_dit.blocks[0].attn1.to_q.weight.data_ptr()) == [str(CHECKPOINT.resolve())]
    # A tensor of many pages: handing its pages back must not change it (they are read again from the file).
    original = torch.nn.Linear(512, 512)
    path = tmp_path / "big.ckpt"
    torch.save({"model": original.state_dict()}, path)
    loaded = load_torch_module(lambda: torch.nn.Linear(512, 512), path, entry="model")
    assert mapped_files_at(loaded.weight.data_ptr()) == [str(path.resolve())]
    loaded.file_mappings[0].release(loaded.weight)
    assert torch.equal(loaded.weight, original.weight)


def test_truncated_checkpoint_is_named(tmp_path, fixture_record):
    truncated = tmp_path / "model.fp16.ckpt"
    data = CHECKPOINT.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match=r"model\.fp16\.ckpt: is truncated, corrupt") as caught:
        load_dit(truncated, DiT21Config.from_params(fixture_record["params"]))
    assert "download it again" in caught.value.hint


def test_wrong_or_unsafe_checkpoints_are_refused(tmp_path, fixture_record):
    config = DiT21Config.from_params(fixture_record["params"])
    state = torch.load(CHECKPOINT, weights_only=True)["model"]
    bare = tmp_path / "bare.ckpt"
    torch.save(state, bare)
    with pytest.raises(WeightsError, match="has no 'model' entry"):
        load_dit(bare, config)
    missing = tmp_path / "missing.ckpt"
    torch.save({"model": {k: v for k, v in state.items() if k != "blocks.6.moe.gate.weight"}}, missing)
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\) blocks\.6\.moe\.gate\.weight"):
        load_dit(missing, config)
    with pytest.raises(WeightsError, match="size mismatch"):
        load_dit(CHECKPOINT, DiT21Config.from_params({**fixture_record["params"], "hidden_size": 48, "num_heads": 3}))
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"model": state, "extra": Path("x")}, unsafe)
    with pytest.raises(WeightsError, match="objects other than tensors"):
        load_dit(unsafe, config)
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"model": state}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="not a zip-format PyTorch checkpoint"):
        load_dit(legacy, config)
    with pytest.raises(WeightsError, match="cannot be read"):
        load_dit(tmp_path / "absent.ckpt", config)


def test_a_bare_state_dict_loads_without_an_entry_and_keys_can_be_skipped(tmp_path):
    module = torch.nn.Linear(3, 2)
    path = tmp_path / "linear.ckpt"
    torch.save(module.state_dict(), path)
    loaded = load_torch_module(lambda: torch.nn.Linear(3, 2), path)
    assert torch.equal(loaded.weight, module.weight)
    with_extra = tmp_path / "with_encoder.ckpt"
    torch.save({**module.state_dict(), "encoder.weight": torch.ones(4)}, with_extra)
    with pytest.raises(WeightsError, match=r"unexpected 1 key\(s\) encoder\.weight"):
        load_torch_module(lambda: torch.nn.Linear(3, 2), with_extra)
    skipped = load_torch_module(lambda: torch.nn.Linear(3, 2), with_extra,
                                rename=lambda key: None if key.startswith("encoder.") else key)
    assert torch.equal(skipped.bias, module.bias)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(WeightsError, match="linear.ckpt"):
        load_torch_module(lambda: torch.nn.Linear(3, 2), path)


def test_float16_checkpoint_runs_through_the_memory_manager_in_float32(tmp_path, fixture_record, golden):
    """As released: float16 in the file; on the CPU the stage computes in float32 and gives the file's pages back."""
    config = DiT21Config.from_params(fixture_record["params"])
    state = torch.load(CHECKPOINT, weights_only=True)["model"]
    path = tmp_path / "model.fp16.ckpt"
    torch.save({"model": {key: value.half() for key, value in state.items()}}, path)
    reference = HunyuanDiT21(config)
    reference.load_state_dict({key: value.half().float() for key, value in state.items()})
    memory = MemoryManager(mode="stage")
    memory.register("dit", lambda: load_dit(path, config), precision="float16", size_bytes=path.stat().st_size,
                    blocks=lambda model: model.stream_units())
    inputs = [golden["forward.latents"], golden["forward.t"], golden["forward.context"]]
    dtype = memory.compute_dtype("dit")
    assert dtype == torch.float32
    with torch.inference_mode():
        velocity = memory.run_stage("denoise", ["dit"], lambda mods: mods["dit"](*(x.to(memory.device, dtype) for x in inputs)))
        assert_close(velocity, reference(*inputs), "float16 weights computed in float32")
    assert memory.placement("dit") == "parked"
    assert memory.describe()["components"][0]["storage_dtype"] == "float16"


# -- the hunyuan3d-2.1 pipeline -------------------------------------------------------------------
# Tiny random weights in the released layout: a ``hunyuan3d-dit-v2-1`` folder with config.yaml and
# one ``model.fp16.ckpt`` of ``{"model", "vae", "conditioner"}`` state dicts, the VAE's with the
# point-cloud encoder the pipeline skips. The conditioner and the VAE decoder are the official
# Hunyuan3D-2 modules (2.1 ships the same code), the DiT ours (checked above against the 2.1 code).

DINO_L = {**DINO, "use_swiglu_ffn": False}  # DINOv2-large's plain GELU MLP, as 2.1's config says
TINY_DIT = {"input_size": LATENTS, "in_channels": CHANNELS, "hidden_size": 32, "context_dim": DINO["hidden_size"], "depth": 5,
            "num_heads": 2, "qk_norm": True, "text_len": 17, "with_decoupled_ca": False, "use_attention_pooling": False,
            "qk_norm_type": "rms", "qkv_bias": False, "use_pos_emb": False, "num_moe_layers": 2, "num_experts": 4, "moe_top_k": 2}


def tiny_config_21() -> dict:
    return {
        "model": {"target": "hy3dshape.models.denoisers.hunyuandit.HunYuanDiTPlain", "params": dict(TINY_DIT)},
        "vae": {"target": "hy3dshape.models.autoencoders.ShapeVAE",
                "params": {"num_latents": LATENTS, "embed_dim": CHANNELS, "num_freqs": 8, "include_pi": False, "heads": 2, "width": 32,
                           "num_encoder_layers": 1, "num_decoder_layers": 1, "qkv_bias": False, "qk_norm": True,
                           "scale_factor": 1.0039506158752403, "geo_decoder_mlp_expand_ratio": 4, "geo_decoder_downsample_ratio": 1,
                           "geo_decoder_ln_post": True, "point_feats": 4, "pc_size": 256, "pc_sharpedge_size": 0}},
        "conditioner": {"target": "hy3dshape.models.conditioner.SingleImageEncoder",
                        "params": {"main_image_encoder": {"type": "DinoImageEncoder",
                                                          "kwargs": {"config": dict(DINO_L), "image_size": DINO["image_size"],
                                                                     "use_cls_token": True}}}},
        "scheduler": {"target": "hy3dshape.schedulers.FlowMatchEulerDiscreteScheduler", "params": {"num_train_timesteps": 1000}},
        "image_processor": {"target": "hy3dshape.preprocessors.ImageProcessorV2", "params": {"size": 64, "border_ratio": 0.15}},
        "pipeline": {"target": "hy3dshape.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


def write_weights_21(root: Path, seed: int = 0) -> tuple[Path, dict]:
    """``root`` as ``hf download tencent/Hunyuan3D-2.1 --include "hunyuan3d-dit-v2-1/*" --local-dir root`` leaves it; returns it and the official conditioner."""
    import yaml
    from hy3dgen_oracle import official_conditioner_state, shapegen_module

    config = tiny_config_21()
    conditioner = shapegen_module("models.conditioner").SingleImageEncoder(**config["conditioner"]["params"]).eval()
    decoder_params = {k: v for k, v in config["vae"]["params"].items()
                      if k not in ("num_encoder_layers", "point_feats", "pc_size", "pc_sharpedge_size")}
    vae = shapegen_module("models.autoencoders").ShapeVAE(**decoder_params).eval()
    dit = HunyuanDiT21(DiT21Config.from_params(config["model"]["params"])).eval()
    for offset, module in enumerate((conditioner, dit, vae)):
        randomise(module, seed + offset)
    generator = torch.Generator().manual_seed(seed + 3)
    width, channels = config["vae"]["params"]["width"], config["vae"]["params"]["embed_dim"]
    encoder = {"encoder.input_proj.weight": torch.randn(width, 55, generator=generator),
               "pre_kl.weight": torch.randn(2 * channels, width, generator=generator), "pre_kl.bias": torch.zeros(2 * channels)}
    half = lambda state: {k: v.half() for k, v in state.items()}  # noqa: E731 - stored in float16 as released
    folder = root / "hunyuan3d-dit-v2-1"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"model": half(dit.state_dict()), "vae": half(vae.state_dict() | encoder),
                "conditioner": half(official_conditioner_state(conditioner))}, folder / "model.fp16.ckpt")
    return root, {"conditioner": conditioner}


def test_dinov2_large_conditioner_matches_the_official_one(tmp_path):
    from backend.pipelines.hunyuan3d_v2.config import read_config
    from backend.pipelines.hunyuan3d_v2_1.pipeline import load_conditioner, parse_config_21

    root, official = write_weights_21(tmp_path)
    folder = root / "hunyuan3d-dit-v2-1"
    ours = load_conditioner(folder / "model.fp16.ckpt", read_config(folder, parse_config_21))
    assert all(hasattr(layer.mlp, "fc1") for layer in ours.blocks())
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    theirs_module = official["conditioner"].half().float()
    with torch.inference_mode():
        theirs = theirs_module(image=images)["main"]
        mine = ours.float()(images)
    assert mine.shape == theirs.shape == (1, 17, DINO["hidden_size"])
    assert_close(mine, theirs, "DINOv2-large tokens")


def test_the_catalogue_lists_hunyuan3d_2_1_first_with_the_official_defaults():
    from backend import pipelines

    cls = pipelines.get("hunyuan3d-2.1")
    defaults = {p.name: p.default for p in cls.params}
    assert defaults["steps"] == 50 and defaults["guidance"] == 5.0 and defaults["octree_resolution"] == 384
    assert defaults["chunk_size"] == 8000 and defaults["volume_decoder"] == "plain" and defaults["max_faces"] == 40000
    assert cls.inputs == ("image", "text")
    assert pipelines.AUTO_PREFERENCE[0] == "hunyuan3d-2.1"


def test_missing_2_1_weights_are_named_with_the_download_command(tmp_path):
    from backend import pipelines
    from backend.errors import BackendError
    from backend.pipelines.base import JobRequest

    pipeline = pipelines.get("hunyuan3d-2.1")(weights_dir=str(tmp_path))
    report = pipeline.check_weights()
    assert not report.ready
    assert report.missing == ["tencent/Hunyuan3D-2.1: hunyuan3d-dit-v2-1/config.yaml", "tencent/Hunyuan3D-2.1: hunyuan3d-dit-v2-1/model.fp16.ckpt"]
    assert report.download == ('hf download tencent/Hunyuan3D-2.1 --include "hunyuan3d-dit-v2-1/config.yaml" '
                               f'"hunyuan3d-dit-v2-1/model.fp16.ckpt" --local-dir "{tmp_path}"')
    with pytest.raises(BackendError) as error:
        pipeline.validate(JobRequest(pipeline.name, {}, images={"image": object_picture()}))
    assert error.value.code == "weights_missing" and "hf download tencent/Hunyuan3D-2.1" in error.value.hint
    # Once the folder is there, ``--model auto`` prefers it for a picture.
    write_weights_21(tmp_path)
    assert pipeline.check_weights().ready
    assert pipelines.choose("auto", str(tmp_path), {"image"}) == "hunyuan3d-2.1"


def test_a_hunyuan3d_2_folder_is_refused_by_the_2_1_pipeline(tmp_path):
    import yaml

    from backend.errors import BackendError

    root, _ = write_weights_21(tmp_path)
    config_path = root / "hunyuan3d-dit-v2-1" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["model"]["target"] = "hy3dgen.shapegen.models.Hunyuan3DDiT"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(BackendError, match="HunYuanDiTPlain"):
        run_pipeline("hunyuan3d-2.1", root, images={"image": object_picture()}, params={"steps": 2})


def test_a_truncated_2_1_checkpoint_is_named_before_anything_loads(tmp_path):
    root, _ = write_weights_21(tmp_path)
    path = root / "hunyuan3d-dit-v2-1" / "model.fp16.ckpt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    events: list = []
    with pytest.raises(WeightsError, match="model.fp16.ckpt.*truncated"):
        run_pipeline("hunyuan3d-2.1", root, events, images={"image": object_picture()}, params={"steps": 2})
    assert not [e for e in events if e.get("stage") == "condition"]


# stream needs a CUDA GPU; FlashVDM decodes with the checkpoint's own VAE (there is no turbo VAE for 2.1).
@pytest.mark.parametrize(("mode", "decoder"), [("resident", "plain"), ("stage", "flashvdm")])
def test_a_picture_becomes_a_mesh_on_tiny_2_1_weights(tmp_path, mode, decoder):
    root, _ = write_weights_21(tmp_path)
    events: list = []
    memory = MemoryManager(mode=mode)
    output = run_pipeline("hunyuan3d-2.1", root, events, memory=memory, images={"image": object_picture()},
                          params={"steps": 3, "octree_resolution": 24, "volume_decoder": decoder})
    assert output.mesh.face_count > 0
    assert output.info["latents"] == [1, LATENTS, CHANNELS]
    # Sizes from the checkpoint's entries; blocks: 2 ViT layers, the DiT's stream units, 1 VAE decoder layer.
    described = {c["name"]: c for c in memory.describe()["components"]}
    names = [f"hunyuan3d-dit-v2-1.{part}" for part in ("conditioner", "dit", "vae")]
    saved = torch.load(root / "hunyuan3d-dit-v2-1" / "model.fp16.ckpt", weights_only=True)
    dit_bytes = sum(t.numel() * 2 for t in saved["model"].values())
    assert described[names[1]]["storage_bytes"] == dit_bytes
    dit_units = len(HunyuanDiT21(DiT21Config.from_params(TINY_DIT)).stream_units())
    assert [len(memory._component(name).block_slots) for name in names] == [2, dit_units, 1]
    stages = [e["stage"] for e in events if e.get("step") is not None]
    assert list(dict.fromkeys(stages)) == ["background", "condition", "sampling", "decoding", "mesh"]
    assert [e["step"] for e in events if e.get("stage") == "sampling" and e.get("step") is not None] == [0, 1, 2, 3]


def test_generate_runs_hunyuan3d_2_1_from_the_command_line(tmp_path):
    import subprocess

    from conftest import backend_env

    root, _ = write_weights_21(tmp_path / "weights")
    (tmp_path / "object.png").write_bytes(object_picture())
    out = tmp_path / "out.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "generate", "--model", "hunyuan3d-2.1", "--image", str(tmp_path / "object.png"),
                           "--weights", str(root), "--device", "cpu", "--steps", "2", "--set", "octree_resolution=24", "-o", str(out)],
                          capture_output=True, text=True, env=backend_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr and "sampling" in proc.stderr and out.stat().st_size > 0
