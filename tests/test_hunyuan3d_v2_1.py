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
