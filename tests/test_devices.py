"""Device discovery and the precision policy, on faked machines."""

from __future__ import annotations

import json

import pytest

from backend.devices import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    DeviceInfo,
    PrecisionPolicy,
    choose_precision,
    discover,
    pick_device,
    smoke_test,
)
from backend.errors import BackendError
from backend.runtime import Runtime

GIB = 1 << 30


class FakeProbe:
    def __init__(self, cuda=(), mps=None, cpu=None):
        self._cuda, self._mps = list(cuda), mps
        self._cpu = cpu or DeviceInfo("cpu", name="Fake CPU", total_bytes=32 * GIB, free_bytes=30 * GIB, cores=8)

    def cuda(self):
        return self._cuda

    def mps(self):
        return self._mps

    def cpu(self):
        return self._cpu


def gpu(name: str, capability: tuple[int, int], total_gib: int = 24, index: int = 0) -> DeviceInfo:
    return DeviceInfo("cuda", index, name, total_gib * GIB, total_gib * GIB - GIB, capability)


A100 = gpu("NVIDIA A100-SXM4-80GB", (8, 0), 80)
RTX2080 = gpu("NVIDIA GeForce RTX 2080", (7, 5), 8)
GTX1660 = gpu("NVIDIA GeForce GTX 1660 SUPER", (7, 5), 6)
P100 = gpu("Tesla P100-PCIE-16GB", (6, 0), 16)
K80 = gpu("Tesla K80", (3, 7), 12)
MAC13 = DeviceInfo("mps", name="Apple GPU", os_version=(13, 6))
MAC14 = DeviceInfo("mps", name="Apple GPU", os_version=(14, 2))
CPU_AVX2 = DeviceInfo("cpu", name="AVX2 CPU", cores=8)
CPU_AMX = DeviceInfo("cpu", name="Sapphire Rapids", cores=32, native_bf16=True)


@pytest.mark.parametrize(
    "device, requested, expected",
    [
        (A100, "auto", FLOAT16),
        (A100, BFLOAT16, BFLOAT16),
        (A100, FLOAT32, FLOAT32),
        (RTX2080, "auto", FLOAT16),
        (RTX2080, BFLOAT16, FLOAT16),  # 7.5 only emulates bfloat16
        (P100, "auto", FLOAT16),
        (GTX1660, "auto", FLOAT32),
        (GTX1660, FLOAT16, FLOAT32),
        (K80, "auto", FLOAT32),
        (MAC13, "auto", FLOAT16),
        (MAC13, BFLOAT16, FLOAT16),
        (MAC14, BFLOAT16, BFLOAT16),
        (CPU_AVX2, "auto", FLOAT32),
        (CPU_AVX2, BFLOAT16, FLOAT32),
        (CPU_AVX2, FLOAT16, FLOAT32),
        (CPU_AMX, "auto", FLOAT32),
        (CPU_AMX, BFLOAT16, BFLOAT16),
    ],
    ids=lambda v: v.name if isinstance(v, DeviceInfo) else v,
)
def test_policy_table_for_float16_weights(device, requested, expected):
    choice = choose_precision(device, FLOAT16, requested)
    assert choice.dtype == expected
    assert choice.reason


def test_float32_weights_stay_float32_on_a_gpu_unless_half_is_asked_for():
    assert choose_precision(A100, FLOAT32).dtype == FLOAT32
    assert choose_precision(A100, FLOAT32, FLOAT16).dtype == FLOAT16


def test_bfloat16_weights_upcast_where_bfloat16_is_emulated():
    assert choose_precision(A100, BFLOAT16).dtype == BFLOAT16
    assert choose_precision(RTX2080, BFLOAT16).dtype == FLOAT32


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(BackendError, match="float16"):
        choose_precision(A100, FLOAT16, "fp8")


def test_a_failing_smoke_test_overrides_the_table():
    tried = []

    def smoke(device, dtype):
        tried.append((device, dtype))
        return "group_norm returned non-finite values" if dtype == FLOAT16 else None

    policy = PrecisionPolicy(RTX2080, smoke=smoke)
    choice = policy.choose(FLOAT16)
    assert choice.dtype == FLOAT32
    assert "smoke test" in choice.reason and "group_norm" in choice.reason
    assert tried == [("cuda:0", FLOAT16), ("cuda:0", FLOAT32)]
    policy.choose(FLOAT16)
    assert len(tried) == 2, "verdicts are cached per dtype"
    assert policy.describe()["smoke_tests"][FLOAT16].startswith("group_norm")


def test_bfloat16_falls_back_to_float16_before_float32():
    policy = PrecisionPolicy(A100, BFLOAT16, smoke=lambda d, t: "broken" if t == BFLOAT16 else None)
    assert policy.compute_dtype(FLOAT16) == FLOAT16


def test_a_device_that_fails_even_float32_is_an_error():
    policy = PrecisionPolicy(K80, smoke=lambda d, t: "matmul raised")
    with pytest.raises(BackendError, match="float32"):
        policy.choose()


def test_the_real_smoke_test_passes_on_this_cpu_in_float32():
    assert smoke_test("cpu", FLOAT32) is None


def test_discovery_lists_accelerators_before_the_cpu():
    probe = FakeProbe(cuda=[RTX2080, gpu("NVIDIA RTX A6000", (8, 6), 48, index=1)], mps=None)
    kinds = [d.torch_device for d in discover(probe)]
    assert kinds == ["cuda:0", "cuda:1", "cpu"]


@pytest.mark.parametrize(
    "probe, requested, expected",
    [
        (FakeProbe(cuda=[RTX2080, gpu("NVIDIA RTX A6000", (8, 6), 48, index=1)]), "auto", "cuda:1"),
        (FakeProbe(cuda=[RTX2080]), "cuda", "cuda:0"),
        (FakeProbe(mps=MAC14), "auto", "mps"),
        (FakeProbe(), "auto", "cpu"),
        (FakeProbe(cuda=[RTX2080]), "cpu", "cpu"),
    ],
)
def test_pick_device(probe, requested, expected):
    assert pick_device(discover(probe), requested).torch_device == expected


def test_asking_for_a_missing_device_names_the_available_ones():
    with pytest.raises(BackendError) as err:
        pick_device(discover(FakeProbe()), "cuda:1")
    assert "cuda:1" in err.value.message and "cpu" in err.value.hint


def test_runtime_on_a_faked_gpu_machine_describes_devices_as_json():
    probe = FakeProbe(cuda=[GTX1660])
    runtime = Runtime.create(probe=probe, smoke=lambda d, t: None, free_memory=lambda: (5 * GIB, 6 * GIB))
    assert runtime.device == "cuda:0"
    devices = json.loads(json.dumps(runtime.describe_devices()))
    assert [d["selected"] for d in devices] == [True, False]
    assert devices[0]["compute_dtype"] == FLOAT32 and "GTX 1660" in devices[0]["precision_why"]
    assert devices[0]["compute_capability"] == "7.5"
    status = json.loads(json.dumps(runtime.status()))
    assert status["requested"] == "auto" and status["components"] == []


def test_runtime_memory_cpu_forces_the_cpu():
    runtime = Runtime.create(memory="cpu", probe=FakeProbe(cuda=[A100]), smoke=lambda d, t: None)
    assert runtime.device == "cpu"
    assert runtime.memory.describe()["mode"] == "cpu"
    with pytest.raises(BackendError, match="CPU"):
        Runtime.create(device="cuda", memory="cpu", probe=FakeProbe(cuda=[A100]), smoke=lambda d, t: None)


def test_stream_mode_needs_cuda():
    with pytest.raises(BackendError, match="CUDA"):
        Runtime.create(memory="stream", probe=FakeProbe(), smoke=lambda d, t: None)


def test_importing_the_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, backend.runtime, backend.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("fraction, expected", [
    (1.0, (100 * GIB + 2 * GIB, 140 * GIB)),  # the driver's free memory and what torch holds unused
    (0.05, (7 * GIB - 3 * GIB, 7 * GIB)),  # a cap of 7 GiB, 3 GiB of it in use
    (0.01, (0, int(140 * GIB * 0.01))),  # more in use than the cap allows: nothing free
])
def test_cuda_memory_is_what_this_process_may_still_use(monkeypatch, fraction, expected):
    import torch

    from backend.devices import cuda_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * GIB, 140 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: fraction)
    assert cuda_memory(0) == expected
