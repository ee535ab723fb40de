"""The memory manager and the safetensors loader, on the CPU.

An accelerator is stood in for by PyTorch's ``meta`` device: tensors really move there (so their
``.device`` tells where they are) but no memory is used; modules executed there only check shapes.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from backend.devices import DeviceInfo, PrecisionPolicy
from backend.errors import BackendError
from backend.memory import MemoryManager, WeightsError, load_safetensors_module
from backend.memory.loading import MappedFile
from backend.protocol import ErrorCode

MIB = 1 << 20


def tiny_model(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.GroupNorm(4, width),
        nn.Flatten(),
        nn.Linear(width * 4 * 4, width),
        nn.LayerNorm(width),
        nn.Linear(width, 4),
    )


def half_loader(seed: int = 0, calls: list | None = None):
    def load() -> nn.Module:
        if calls is not None:
            calls.append(seed)
        return tiny_model(seed).half()

    return load


def fake_accelerator(mode: str, budget_bytes: int = 1 << 40) -> MemoryManager:
    policy = PrecisionPolicy(DeviceInfo("meta", name="stand-in accelerator"), smoke=lambda d, t: None)
    return MemoryManager(policy, mode, budget_bytes=budget_bytes)


def devices_of(module: nn.Module) -> set[str]:
    return {t.device.type for t in [*module.parameters(), *module.buffers()]}


def dtypes_of(module: nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def run(mm: MemoryManager, stage: str, names: list[str], events: list | None = None, check=None):
    def fn(modules):
        if check is not None:
            check(modules)
        return {name: devices_of(m) for name, m in modules.items()}

    return mm.run_stage(stage, names, fn, report=(lambda **e: events.append(e)) if events is not None else None)


# -- precision on the CPU ------------------------------------------------------------------------


def test_float16_weights_execute_in_float32_on_the_cpu_without_warnings():
    mm = MemoryManager(mode="stage")
    mm.register("model", half_loader())
    x = torch.randn(2, 3, 4, 4)
    reference = tiny_model().half().float()(x)  # float32 math on the same (float16-rounded) weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mm.run_stage("s", ["model"], lambda m: m["model"](x.to(mm.compute_dtype("model"))))
    assert not caught, [str(w.message) for w in caught]
    assert mm.compute_dtype("model") == torch.float32
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=1e-3)
    assert dtypes_of(mm._components["model"].module) == {torch.float16}, "parked again in its storage dtype"


# -- stage mode ----------------------------------------------------------------------------------


def test_stage_mode_keeps_only_the_running_stage_on_the_device():
    mm = fake_accelerator("stage")
    for index, name in enumerate(["a", "b", "c"]):
        mm.register(name, half_loader(index))
    stages = {"first": ["a"], "second": ["b", "c"], "third": ["c"]}
    for stage, names in stages.items():
        def check(modules, names=names):
            for other in {"a", "b", "c"}:
                running = other in names
                assert mm.placement(other) == ("ready" if running else "parked") or mm.placement(other) == "unloaded"
                module = mm._components[other].module
                if module is not None:
                    assert devices_of(module) == ({"meta"} if running else {"cpu"})
                    assert dtypes_of(module) == ({torch.float32} if running else {torch.float16})

        run(mm, stage, names, check=check)
    assert {mm.placement(n) for n in "abc"} == {"parked"}


def test_stage_mode_on_the_cpu_parks_in_float16_and_runs_in_float32():
    mm = MemoryManager(mode="stage")
    mm.register("a", half_loader(0))
    mm.register("b", half_loader(1))

    def check(modules):
        assert dtypes_of(modules["b"]) == {torch.float32}
        assert dtypes_of(mm._components["a"].module) == {torch.float16}

    run(mm, "one", ["a"])
    run(mm, "two", ["b"], check=check)
    assert mm.placement("a") == mm.placement("b") == "parked"


# -- residency across jobs -----------------------------------------------------------------------


def test_components_stay_resident_across_jobs_and_the_least_recently_used_is_evicted():
    calls: list[int] = []
    one = tiny_model().half()
    size = sum(p.numel() * 4 for p in one.parameters()) + sum(b.numel() * b.element_size() for b in one.buffers())
    mm = fake_accelerator("resident", budget_bytes=2 * size + size // 2 + (256 * MIB))  # room for two of three
    for index, name in enumerate(["a", "b", "c"]):
        mm.register(name, half_loader(index, calls))

    def job():
        run(mm, "first", ["a"])
        run(mm, "second", ["b"])

    job()
    moved_first_job = sum(s["h2d_bytes"] for s in mm.stats())
    assert moved_first_job > 0
    job()
    assert calls == [0, 1], "the second job loads nothing"
    assert sum(s["h2d_bytes"] for s in mm.stats()[2:]) == 0, "nor moves anything"
    assert mm.placement("a") == mm.placement("b") == "ready"

    run(mm, "third", ["c"])
    assert [mm.placement(n) for n in "abc"] == ["parked", "ready", "ready"], "a was used least recently"
    assert devices_of(mm._components["a"].module) == {"cpu"}


# -- out of memory ---------------------------------------------------------------------------------


def test_out_of_memory_steps_down_one_mode_and_retries_once():
    mm = fake_accelerator("resident")
    mm.register("a", half_loader())
    events: list[dict] = []
    attempts: list[str] = []

    def fn(modules):
        attempts.append(mm.placement("a"))
        if len(attempts) == 1:
            torch.empty(1, device="meta")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert mm.run_stage("multiview", ["a"], fn, report=lambda **e: events.append(e)) == "done"
    assert len(attempts) == 2
    downgrades = [e["downgrade"] for e in events if "downgrade" in e]
    assert downgrades == [{"stage": "multiview", "from": "resident", "to": "stage",
                           "error": "CUDA out of memory. Tried to allocate 2.00 GiB"}]
    assert mm.last_stage_stats["mode"] == "stage" and mm.last_stage_stats["downgraded_from"] == "resident"
    assert mm.placement("a") == "parked", "stage mode parked it afterwards"
    assert mm.describe()["mode"] == "stage"
    json.dumps(events)


def test_out_of_memory_twice_is_a_clear_error_and_leaves_nothing_on_the_device():
    mm = fake_accelerator("resident")
    mm.register("a", half_loader())

    def fn(modules):
        raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")

    with pytest.raises(BackendError) as err:
        mm.run_stage("reconstruct", ["a"], fn)
    assert err.value.code == ErrorCode.OUT_OF_MEMORY and "reconstruct" in err.value.message
    assert mm.placement("a") == "parked"
    assert devices_of(mm._components["a"].module) == {"cpu"}


def test_other_errors_are_not_retried():
    mm = fake_accelerator("resident")
    mm.register("a", half_loader())
    attempts = []

    def fn(modules):
        attempts.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        mm.run_stage("s", ["a"], fn)
    assert attempts == [1]


# -- failures leave nothing half-moved -------------------------------------------------------------


def test_a_failing_stage_leaves_every_component_parked():
    mm = fake_accelerator("resident")
    mm.register("a", half_loader(0))
    mm.register("b", half_loader(1))
    run(mm, "warm", ["a"])
    assert mm.placement("a") == "ready"

    def fn(modules):
        assert devices_of(modules["a"]) == devices_of(modules["b"]) == {"meta"}
        raise KeyError("boom")

    with pytest.raises(KeyError):
        mm.run_stage("s", ["a", "b"], fn)
    for name in "ab":
        assert mm.placement(name) == "parked"
        assert devices_of(mm._components[name].module) == {"cpu"}
        assert dtypes_of(mm._components[name].module) == {torch.float16}


def test_a_failing_loader_leaves_the_components_already_moved_parked():
    mm = fake_accelerator("resident")
    mm.register("a", half_loader(0))

    def broken():
        raise WeightsError("unet.safetensors", "is truncated")

    mm.register("b", broken)
    with pytest.raises(WeightsError):
        run(mm, "s", ["a", "b"])
    assert mm.placement("a") == "parked" and mm.placement("b") == "unloaded"
    assert devices_of(mm._components["a"].module) == {"cpu"}


def test_a_failure_while_moving_installs_nothing(monkeypatch):
    mm = fake_accelerator("resident")
    mm.register("a", half_loader(0))
    original = torch.Tensor.to
    moved = []

    def fail_on_third(self, *args, **kwargs):
        if args and args[0] == torch.device("meta"):
            moved.append(1)
            if len(moved) == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected while copying)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fail_on_third)
    run(mm, "s", ["a"])  # the first attempt fails mid-copy; the retry in stage mode succeeds
    monkeypatch.undo()
    assert mm.last_stage_stats["downgraded_from"] == "resident"
    assert mm.placement("a") == "parked"
    assert devices_of(mm._components["a"].module) == {"cpu"}


def test_loaders_must_not_place_tensors_themselves():
    mm = fake_accelerator("resident")
    mm.register("a", lambda: tiny_model().to("meta"))
    with pytest.raises(BackendError, match="memory manager moves them"):
        run(mm, "s", ["a"])


# -- auto mode -------------------------------------------------------------------------------------


def test_auto_picks_resident_when_everything_fits_and_stage_when_not():
    one = sum(p.numel() * 4 for p in tiny_model().parameters())
    for budget, expected in [(1 << 30, "resident"), (256 * MIB + one + one // 4 + 2048, "stage")]:
        mm = fake_accelerator("auto", budget_bytes=budget)
        mm.register("a", half_loader(0), size_bytes=one // 2)
        mm.register("b", half_loader(1), size_bytes=one // 2)
        events: list[dict] = []
        run(mm, "s", ["a"], events)
        chosen = [e["memory"] for e in events if "memory" in e]
        assert chosen[0]["mode"] == expected, chosen
        assert "budget" in chosen[0]["why"]
        assert mm.describe()["mode"] == expected


def test_spare_bytes_is_what_the_budget_leaves_beside_the_components_held_on_the_device():
    from backend.pipelines.hunyuan3d_v2.pipeline import grids_device

    mm = fake_accelerator("resident", budget_bytes=1 << 30)
    mm.register("a", half_loader(0))
    assert mm.spare_bytes() == 1 << 30
    run(mm, "s", ["a"])
    held = sum(p.numel() * mm.compute_dtype("a").itemsize for p in tiny_model().parameters())
    assert mm.spare_bytes() == (1 << 30) - held
    # Hunyuan3D-2's decoding keeps its grids with the decoder while its working set fits there, else in host memory.
    assert grids_device(mm, mm.spare_bytes()) == mm.device
    assert grids_device(mm, mm.spare_bytes() + 1) == torch.device("cpu")
    assert grids_device(MemoryManager(), 1 << 60) == torch.device("cpu")


def test_auto_on_the_cpu_is_cpu_mode():
    mm = MemoryManager(mode="auto")
    mm.register("a", half_loader())
    run(mm, "s", ["a"])
    assert mm.last_stage_stats["mode"] == "cpu"
    assert mm.placement("a") == "ready", "cpu mode keeps the float32 copy for the next job"


def test_stage_figures_are_recorded_and_json_able():
    mm = fake_accelerator("stage")
    mm.register("a", half_loader())
    events: list[dict] = []
    run(mm, "s", ["a"], events)
    stats = mm.last_stage_stats
    expected = sum(p.numel() * 2 for p in tiny_model().parameters()) + sum(
        b.numel() * b.element_size() for b in tiny_model().buffers())
    assert stats["h2d_bytes"] == expected
    assert stats["peak_host_rss_bytes"] > 0 and stats["components"] == ["a"]
    assert any("memory_stats" in e for e in events)
    json.dumps(mm.describe())


# -- loading from safetensors ------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model(3).half().state_dict().items()}, str(path))
    return path


def test_safetensors_loading_is_zero_copy_and_exact(checkpoint):
    module = load_safetensors_module(lambda: tiny_model(99), checkpoint)
    expected = tiny_model(3).half().state_dict()
    for key, tensor in module.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    (mapping,) = module.file_mappings
    assert all(mapping.owns(p) for p in module.parameters()), "parameters are views of the file"
    assert not module.training


def test_loaded_weights_run_through_the_manager(checkpoint):
    mm = MemoryManager(mode="stage")
    mm.register("model", lambda: load_safetensors_module(tiny_model, checkpoint))
    x = torch.randn(1, 3, 4, 4)
    out = mm.run_stage("s", ["model"], lambda m: m["model"](x))
    assert torch.allclose(out, tiny_model(3).half().float()(x), atol=1e-3)


def test_released_file_pages_read_back_unchanged(checkpoint):
    mapped = MappedFile(checkpoint)
    before = {k: v.clone() for k, v in mapped.tensors.items()}
    for tensor in mapped.tensors.values():
        mapped.release(tensor)
    for key, tensor in mapped.tensors.items():
        assert torch.equal(tensor, before[key])


def test_missing_and_unexpected_keys_are_named_with_the_file(tmp_path):
    state = tiny_model().half().state_dict()
    state.pop("5.bias")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError) as err:
        load_safetensors_module(tiny_model, path)
    message = err.value.message
    assert "wrong.safetensors" in message and "5.bias" in message and "extra.weight" in message


def test_truncated_file_is_named(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) - 100])
    with pytest.raises(WeightsError, match="model.safetensors.*truncated"):
        load_safetensors_module(tiny_model, checkpoint)


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx", b"\xff" * 64])
def test_corrupt_file_is_named(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="broken.safetensors"):
        load_safetensors_module(tiny_model, path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="absent.safetensors"):
        load_safetensors_module(tiny_model, tmp_path / "absent.safetensors")


# -- precision is the family's; a parked module cannot run ------------------------------------------


def fake_cuda(mode: str = "stage") -> MemoryManager:
    """A CUDA GPU as the policy sees it (tests never move tensors to it)."""
    info = DeviceInfo("cuda", 0, "NVIDIA GeForce RTX 4090", 24 << 30, 20 << 30, (8, 9))
    return MemoryManager(PrecisionPolicy(info, smoke=lambda d, t: None), mode, free_memory=lambda: (20 << 30, 24 << 30))


def test_a_float32_checkpoint_of_a_float16_model_is_parked_in_float16_for_a_gpu_and_float32_on_the_cpu(tmp_path):
    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model(3).state_dict().items()}, str(path))
    for mm, compute in ((fake_cuda(), torch.float16), (MemoryManager(), torch.float32)):
        mm.register("model", lambda: load_safetensors_module(tiny_model, path), precision="float16", files=[path])
        assert mm.compute_dtype("model") == compute
        assert mm.describe_component("model")["storage_dtype"] == "float32"
        mm.load("model")
        assert dtypes_of(mm._components["model"].module) == {compute}, "parked in the smaller of storage and compute dtypes"
        assert mm.describe_component("model")["parked_dtype"] == str(compute).removeprefix("torch.")
    x = torch.randn(2, 3, 4, 4)
    out = mm.run_stage("s", ["model"], lambda m: m["model"](x))  # the CPU manager: float32 throughout
    assert (out - tiny_model(3)(x)).abs().max().item() == 0.0


def test_a_model_made_for_float32_stays_float32_on_a_gpu():
    mm = fake_cuda()
    mm.register("nano", half_loader(), precision="float32")
    assert mm.compute_dtype("nano") == torch.float32
    assert "float32" in mm.describe_component("nano")["compute_dtype_why"]


def test_a_parked_module_raises_when_called_and_runs_inside_a_stage():
    mm = fake_accelerator("stage")
    mm.register("a", half_loader())
    mm.load("a")
    module = mm._components["a"].module
    for call in (lambda: module(torch.zeros(1, 3, 4, 4, dtype=torch.float16)), lambda: module[3](torch.zeros(1, 256))):
        with pytest.raises(BackendError) as error:
            call()
        assert error.value.code == ErrorCode.INTERNAL and "'a'" in error.value.message and "parked" in error.value.message
    out = mm.run_stage("s", ["a"], lambda m: m["a"](torch.zeros(1, 3, 4, 4, device="meta")))
    assert out.device.type == "meta"
    with pytest.raises(BackendError):
        module(torch.zeros(1, 3, 4, 4))  # parked again after the stage


# -- components are a name and a file -----------------------------------------------------------------


def test_registering_again_reuses_the_file_and_a_new_file_replaces_it(tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    for path, seed in ((first, 1), (second, 2)):
        save_file({k: v.contiguous() for k, v in tiny_model(seed).state_dict().items()}, str(path))
    mm = MemoryManager(mode="cpu")
    x = torch.randn(1, 3, 4, 4)

    def register(path):
        mm.register("model", lambda: load_safetensors_module(tiny_model, path), precision="float32", files=[path])

    register(first)
    first_out = mm.run_stage("s", ["model"], lambda m: m["model"](x))
    module = mm._components["model"].module
    register(first)
    assert mm._components["model"].module is module, "the same file is not loaded again"
    register(second)
    assert mm.placement("model") == "unloaded"
    second_out = mm.run_stage("s", ["model"], lambda m: m["model"](x))
    assert torch.equal(first_out, tiny_model(1)(x)) and torch.equal(second_out, tiny_model(2)(x))
    assert mm.describe_component("model")["files"] == [str(second.resolve())]


# -- memory is given back ------------------------------------------------------------------------------


def test_release_parks_everything_and_says_what_was_freed():
    mm = fake_accelerator("resident")
    for index, name in enumerate("ab"):
        mm.register(name, half_loader(index))
    run(mm, "s", ["a", "b"])
    assert mm.holds_executable_copies() and mm.describe()["device_weights_bytes"] > 0
    freed = mm.release()
    expected = sum(p.numel() * 4 for p in tiny_model().parameters()) + sum(b.numel() * 4 for b in tiny_model().buffers())
    assert freed["freed"] == [{"component": "a", "bytes": expected}, {"component": "b", "bytes": expected}]
    assert freed["freed_bytes"] == 2 * expected
    assert {mm.placement(n) for n in "ab"} == {"parked"} and not mm.holds_executable_copies()
    assert mm.describe()["device_weights_bytes"] == 0
    assert mm.release()["freed"] == []
    run(mm, "s", ["a"])  # weights stayed in host RAM: the next stage only copies them over
    assert mm.placement("a") == "ready"


def test_release_in_cpu_mode_drops_the_float32_copies_of_float16_weights():
    mm = MemoryManager(mode="cpu")
    mm.register("half", half_loader(0))
    mm.register("full", lambda: tiny_model(1), precision="float32")
    run(mm, "s", ["half", "full"])
    freed = {f["component"]: f["bytes"] for f in mm.release()["freed"]}
    assert freed["half"] == sum(p.numel() * 4 for p in tiny_model().parameters()) + sum(b.numel() * 4 for b in tiny_model().buffers())
    assert freed["full"] == 0, "float32 weights compute from their host copy: nothing to free"
    run(mm, "s", ["full"])
    assert mm.placement("full") == "ready" and not mm.holds_executable_copies(), "so idling schedules no release"


def test_an_out_of_memory_step_down_lasts_for_its_job_only():
    mm = fake_accelerator("resident")
    mm.register("a", half_loader())
    failures = [1]

    def fn(modules):
        if failures[0]:
            failures[0] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return mm.placement("a")

    assert mm.run_stage("first", ["a"], fn) == "ready"
    assert mm.run_stage("second", ["a"], fn) == "ready" and mm.last_stage_stats["mode"] == "stage", "the rest of the job stays lower"
    mm.after_job()
    events: list[dict] = []
    mm.run_stage("first", ["a"], fn, report=lambda **e: events.append(e))
    assert mm.last_stage_stats["mode"] == "resident"
    assert any("planning afresh" in e["message"] for e in events)


def test_auto_plans_on_the_running_jobs_components_only():
    one = sum(p.numel() * 4 for p in tiny_model().parameters())
    mm = fake_accelerator("auto", budget_bytes=256 * MIB + 2 * one + one // 2)
    for name in "abc":
        mm.register(name, half_loader(), size_bytes=one // 2)
    events: list[dict] = []
    run(mm, "s", ["a"], events)
    assert [e["memory"]["mode"] for e in events if "memory" in e] == ["stage"], "a, b and c together exceed the budget"
    mm.after_job()
    for name in "ab":  # the next job uses two of the three
        mm.register(name, half_loader(), size_bytes=one // 2)
    events.clear()
    run(mm, "s", ["a"], events)
    assert [e["memory"]["mode"] for e in events if "memory" in e] == ["resident"]
    assert mm.describe()["job_components"] == ["a", "b"]


# -- stream mode and page-locked buffers, their logic on the CPU -------------------------------------


class ImmediateSide:
    """Stands in for the side CUDA stream: copies at once and records the order of events."""

    def __init__(self, log: list):
        self.log = log

    def copy(self, start):
        copies = start()
        self.log.append(("copied", len(self.log)))
        return copies, len(self.log) - 1

    def use(self, copies, ready):
        self.log.append(("used", ready))

    def drain(self):
        self.log.append(("drained",))


def blocks_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(*(nn.Linear(8, 8) for _ in range(4))), nn.Linear(8, 2))
    return model.half()


def test_stream_runs_blocks_in_order_with_the_next_one_prefetched_and_drops_each_after_it_runs():
    from backend.memory.component import Component
    from backend.memory.streaming import BlockStreamer
    from backend.memory.transfer import Transfers

    component = Component("m", blocks_model, "float16", (), lambda m: list(m[1]), None, "float16")
    component.attach(blocks_model(), torch.float32)
    log: list = []
    seen: list[int] = []
    blocks = list(component.module[1])
    for index, block in enumerate(blocks):
        block.register_forward_hook(lambda m, a, o, i=index: seen.append(i))
    transfers = Transfers()
    streamer = BlockStreamer(component, torch.device("meta"), torch.float32, transfers, side=ImmediateSide(log))
    with streamer:
        assert component.streaming and component.module[0].weight.device.type == "meta", "the rest moves for the stage"
        assert {b.weight.device.type for b in blocks} == {"cpu"} and list(streamer._pending) == [0], "block 0 is on its way"
        for _ in range(2):  # a denoising loop calls the model again
            component.module(torch.zeros(1, 4, device="meta"))
        assert seen == [0, 1, 2, 3] * 2
        # After a block runs its device copy is dropped: every block points at its host copy again.
        assert {b.weight.device.type for b in blocks} == {"cpu"}
        assert list(streamer._pending) == [0], "after the last block, block 0 is prefetched for the next call"
    assert log[-1] == ("drained",) and not component.streaming and component.placement == "parked"
    assert component.module[0].weight.device.type == "cpu"
    copies = [entry for entry in log if entry[0] == "copied"]
    assert len(copies) == 1 + 4 * 2, "block 0 at entry, then each next block once per block run"
    block_bytes = sum(p.numel() * 2 for p in blocks[0].parameters())
    rest_bytes = sum(p.numel() * 2 for p in (*component.module[0].parameters(), *component.module[2].parameters()))
    assert transfers.h2d_bytes == rest_bytes + 9 * block_bytes


def test_stream_makes_each_block_current_just_before_it_runs():
    from backend.memory.component import Component
    from backend.memory.streaming import BlockStreamer
    from backend.memory.transfer import Transfers

    component = Component("m", blocks_model, "float16", (), lambda m: list(m[1]), None, "float16")
    component.attach(blocks_model(), torch.float32)
    where: list[str] = []
    blocks = list(component.module[1])
    for block in blocks:
        block.register_forward_hook(lambda m, a, o: where.append(f"{m.weight.device.type}/{m.weight.dtype}"), prepend=True)
    with BlockStreamer(component, torch.device("meta"), torch.float32, Transfers(), side=ImmediateSide([])):
        component.module(torch.zeros(1, 4, device="meta"))
    assert where == ["meta/torch.float32"] * 4


class RoutedModel(nn.Module):
    """first -> one of three on-demand experts, picked by the caller -> last."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.last = nn.Linear(4, 4), nn.Linear(4, 4)
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        for expert in self.experts:
            expert.stream_on_demand = True
        self.half()

    def units(self) -> list[nn.Module]:
        return [self.first, *self.experts, self.last]

    def forward(self, x, expert: int, announce: bool):
        from backend.memory.streaming import will_call

        x = self.first(x)
        if announce:
            will_call([self.experts[expert]])
        return self.last(self.experts[expert](x))


def test_stream_copies_an_on_demand_unit_only_when_it_is_called_or_announced():
    from backend.memory.component import Component
    from backend.memory.streaming import BlockStreamer
    from backend.memory.transfer import Transfers

    component = Component("m", RoutedModel, "float16", (), RoutedModel.units, None, "float16")
    component.attach(RoutedModel(), torch.float32)
    model = component.module
    pending_when_called: list[list[int]] = []
    model.experts[2].register_forward_pre_hook(lambda _m, _a: pending_when_called.append(sorted(streamer._pending)))
    transfers = Transfers()
    log: list = []
    streamer = BlockStreamer(component, torch.device("meta"), torch.float32, transfers, side=ImmediateSide(log))
    with streamer:
        assert list(streamer._pending) == [0]
        model(torch.zeros(1, 4, device="meta"), expert=2, announce=True)
        # Announced by the gate: expert 2 (unit 3) was on its way before it ran, next to the last unit
        # (prefetched when the first ran, skipping the on-demand experts).
        assert pending_when_called == [[3, 4]]
        model(torch.zeros(1, 4, device="meta"), expert=2, announce=False)
        assert pending_when_called[1] == [4], "not announced: copied only when called"
        assert list(streamer._pending) == [0], "after the last unit, the first is prefetched for the next call"
    assert not hasattr(model.experts[2], "stream_announce"), "the announcement hook leaves with the streamer"
    unit_bytes = 4 * 4 * 2 + 4 * 2
    assert transfers.on_demand_bytes == 2 * unit_bytes, "experts 0 and 1 were never copied"
    assert transfers.on_demand_dense_bytes == 2 * 3 * unit_bytes
    assert transfers.h2d_bytes == unit_bytes * (1 + 2 * (1 + 1 + 1)), "first at entry; per call: last, expert 2, first again"
    assert len([entry for entry in log if entry[0] == "copied"]) == 7


def test_pinning_gathers_host_copies_into_one_exact_buffer_and_falls_back_when_refused(monkeypatch, checkpoint):
    from backend.memory import transfer

    mm = MemoryManager(mode="stage")
    mm.register("model", lambda: load_safetensors_module(tiny_model, checkpoint), files=[checkpoint])
    mm.load("model")
    component = mm._components["model"]
    before = {id(slot): slot.host.clone() for slot in component.slots}
    hosts = [slot.host for slot in component.slots]

    monkeypatch.setattr(transfer, "_register", lambda buffer: False)  # the OS refuses (WSL, a full quota)
    assert transfer.pin_host_copies(component, limit_bytes=1 << 30) is False
    assert not component.pinned and [slot.host for slot in component.slots] == hosts, "the file-backed copies stay"

    assert transfer.pin_host_copies(component, limit_bytes=16) is False, "over the pinning limit: nothing is gathered"

    registered: list[int] = []
    monkeypatch.setattr(transfer, "_register", lambda buffer: registered.append(buffer.numel()) or True)
    assert transfer.pin_host_copies(component, limit_bytes=1 << 30) is True
    sizes = [slot.nbytes for slot in component.slots]
    assert registered == [component.arena.numel()] and component.arena.numel() == sum(-(-s // 64) * 64 for s in sizes)
    base = component.arena.data_ptr()
    for slot in component.slots:
        offset = slot.host.data_ptr() - base
        assert offset % 64 == 0 and 0 <= offset < component.arena.numel()
        assert torch.equal(slot.host, before[id(slot)]) and slot.current().data_ptr() == slot.host.data_ptr()
    assert mm.run_stage("s", ["model"], lambda m: m["model"](torch.zeros(1, 3, 4, 4)).shape) == (1, 4)
    monkeypatch.setattr(transfer, "unpin", lambda buffer: registered.append(-buffer.numel()))
    mm.unload("model")
    assert registered[-1] == -registered[0], "unloading unpins the buffer"


def test_sizes_are_read_from_suffix_less_blobs_of_either_format(tmp_path):
    """Registration resolves links, and the Hugging Face cache links to blobs named by hash: the format comes from the bytes."""
    from backend.memory import stored_size_and_dtype

    tensors = {"weight": torch.zeros(4, 8, dtype=torch.float16), "bias": torch.zeros(4)}
    save_file(tensors, tmp_path / "safetensors-blob")
    torch.save(tensors, tmp_path / "zip-blob")
    expected = (4 * 8 * 2 + 4 * 4, "float16")
    assert stored_size_and_dtype([tmp_path / "safetensors-blob"]) == expected
    assert stored_size_and_dtype([tmp_path / "zip-blob"]) == expected
