"""The precision choice: pure decision on injected measurements, calibration with an injected clock, the
cache; and the small device helpers (probes' parsers, discovery, OOM classification)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from embedding.devices import (
    CPU_BATCH_TOKENS,
    CUDA_BATCH_TOKENS,
    Device,
    batch_token_cap,
    cgroup_available,
    cpu_label,
    cpu_quota,
    discover_devices,
    gpu_driver_present,
    is_oom,
    measure_cpu_peak,
    omp_threads,
    parse_meminfo,
    usable_cpus,
)
from embedding.model import EmbeddingSettings
from embedding.pool_settings import PoolSettings
from embedding.precision import (
    CalibrationCache,
    Measurement,
    PrecisionChoice,
    Thresholds,
    calibrate,
    candidates,
    choose,
    quality,
)

BARS = Thresholds(min_cosine=0.999, min_neighbour_overlap=0.95, min_speedup=1.1)


def m(name: str, speed: float, cosine: float = 0.9999, overlap: float = 0.99, error: str | None = None) -> Measurement:
    return Measurement(name, speed, cosine, overlap, error)


@pytest.mark.parametrize(
    ("measured", "chosen", "reason"),
    [
        ([m("float32", 100)], "float32", "only float32"),
        ([m("float32", 100), m("bfloat16", 300), m("autocast-bfloat16", 250)], "bfloat16", "3.00x"),
        ([m("float32", 100), m("bfloat16", 300, cosine=0.998), m("autocast-bfloat16", 250)], "autocast-bfloat16", ""),
        ([m("float32", 100), m("bfloat16", 300, overlap=0.9)], "float32", "overlap 0.900 < 0.95"),
        ([m("float32", 100), m("bfloat16", 105)], "float32", "1.05x < 1.1x"),  # within noise: not worth it
        ([m("float32", 100), m("bfloat16", 71)], "float32", "0.71x"),  # bf16 without AMX, as measured here
        ([m("float32", 100), m("float16", 0, error="RuntimeError: no kernel")], "float32", "float16 failed"),
    ],
)
def test_choice_is_the_fastest_within_the_quality_bars(measured: list[Measurement], chosen: str, reason: str) -> None:
    choice = choose(measured, BARS)
    assert choice.precision == chosen
    assert reason in choice.reason
    assert choice.measurements == measured
    assert chosen in choice.summary()


def test_choice_needs_a_float32_reference() -> None:
    with pytest.raises(ValueError, match="float32 reference"):
        choose([m("bfloat16", 300)], BARS)


def test_quality_cosine_and_neighbour_overlap() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(60, 16)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cosine, overlap = quality(ref, ref.copy(), n_queries=10)
    assert cosine == pytest.approx(1.0, abs=1e-6) and overlap == 1.0
    shuffled = ref.copy()
    shuffled[10:] = shuffled[10:][::-1]  # same documents, other order: neighbours point elsewhere
    _, low = quality(ref, shuffled, n_queries=10)
    assert low < 0.5
    with pytest.raises(ValueError, match="shape"):
        quality(ref, ref[:5], n_queries=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CostlyEncoder:
    """Real-looking vectors with a chosen cost per text on a fake clock, and an optional distortion."""

    def __init__(self, clock: FakeClock, cost: float, base: np.ndarray, noise: float = 0.0) -> None:
        self.clock, self.cost, self.base, self.noise = clock, cost, base, noise
        self.calls = 0

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.clock.now += self.cost * len(texts)
        rows = np.stack([self.base[int(t)] for t in texts])
        if self.noise:
            rows = rows + self.noise * np.random.default_rng(len(texts)).normal(size=rows.shape)
        return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def test_calibrate_measures_speed_on_the_clock_and_quality_against_float32() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 32))
    texts = [str(i) for i in range(40)]
    batches = [list(range(0, 40, 2)), list(range(1, 40, 2))]  # rows come back in text order all the same
    clock = FakeClock()
    encoders = {
        "float32": CostlyEncoder(clock, 1.0, base),
        "bfloat16": CostlyEncoder(clock, 0.25, base),
        "autocast-bfloat16": CostlyEncoder(clock, 0.1, base, noise=0.5),
    }

    def make(name: str) -> CostlyEncoder:
        if name == "float16":
            raise RuntimeError("no float16 kernels here")
        return encoders[name]

    names = ["float32", "bfloat16", "autocast-bfloat16", "float16"]
    result = calibrate(make, names, texts, batches, tokens=4000, n_queries=8, rounds=2, clock=clock)
    by_name = {r.precision: r for r in result}
    assert by_name["float32"].tokens_per_s == pytest.approx(100.0)  # 4000 tokens / 40 s
    assert by_name["bfloat16"].tokens_per_s == pytest.approx(400.0)
    assert by_name["bfloat16"].min_cosine == pytest.approx(1.0, abs=1e-6)
    assert by_name["autocast-bfloat16"].min_cosine < 0.99  # fastest, but distorted
    assert by_name["float16"].error == "RuntimeError: no float16 kernels here"
    assert encoders["float32"].calls == 2 + 2 * 2  # warm-up pass, then each batch twice
    assert choose(result, BARS).precision == "bfloat16"
    with pytest.raises(ValueError, match="start with float32"):
        calibrate(make, ["bfloat16"], texts, batches, tokens=1, n_queries=1, clock=clock)


def test_cache_round_trip_keyed_and_robust(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "cal")
    key = {"model": "m==1", "device": "cpu X", "torch": "2.13"}
    choice = choose([m("float32", 100), m("bfloat16", 300)], BARS)
    assert cache.get("precision", key) is None
    cache.put("precision", key, choice.to_json())
    loaded = cache.get("precision", key)
    assert loaded is not None
    again = PrecisionChoice.from_json(loaded, cached=True)
    assert (again.precision, again.cached, again.measurements) == ("bfloat16", True, choice.measurements)
    assert cache.get("precision", {**key, "torch": "2.14"}) is None  # another torch: calibrate again
    path = cache.path("precision", key)
    assert path is not None
    path.write_text("{not json")
    assert cache.get("precision", key) is not None  # what this process measured is remembered ...
    assert CalibrationCache(tmp_path / "cal").get("precision", key) is None  # ... a broken file is not trusted
    path.write_text(json.dumps({"key": {"other": 1}, "value": {}}))
    assert CalibrationCache(tmp_path / "cal").get("precision", key) is None
    memory_only = CalibrationCache(None)
    assert memory_only.get("precision", key) is None
    memory_only.put("precision", key, choice.to_json())
    assert memory_only.get("precision", key) == choice.to_json()


def test_candidates_per_device() -> None:
    cpu = Device("cpu", "cpu", "cpu", "test")
    gpu = Device("cuda:0", "cuda:0", "cuda", "test")
    assert candidates(cpu, cpu_bf16=True) == ["float32", "bfloat16", "autocast-bfloat16"]
    assert candidates(cpu, cpu_bf16=False) == ["float32"]  # bf16 without AMX measured slower: not tried
    assert candidates(gpu) == ["float32", "float16", "autocast-float16"]
    assert "bfloat16" in candidates(gpu, cuda_bf16=True)


MEMINFO = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   18000000 kB\n"


def test_memory_and_cpu_parsers() -> None:
    assert parse_meminfo(MEMINFO) == 18000000 * 1024
    assert parse_meminfo("MemTotal: 1 kB\n") is None
    assert cgroup_available("max\n", "123\n") is None
    assert cgroup_available("1000\n", "400\n") == 600
    assert cgroup_available("1000\n", "1400\n") == 0
    assert cpu_quota("max 100000\n") is None
    assert cpu_quota("150000 100000\n") == 2
    assert cpu_label("model name\t: Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n") == (
        "Xeon [amx_bf16 amx_tile avx512_bf16 avx512f]"
    )


def test_cpu_peak_measurement_sees_a_large_allocation() -> None:
    peak = measure_cpu_peak(lambda: np.ones(64 << 20, dtype=np.uint8).sum())
    assert peak is not None and peak >= 32 << 20


def test_discovery_one_worker_per_gpu_else_the_cpu() -> None:
    no_gpu = discover_devices(None, cuda_count=lambda: 0, cpu_threads=2)
    assert [(d.key, d.torch_device, d.kind, d.threads) for d in no_gpu] == [("cpu", "cpu", "cpu", 2)]
    two = discover_devices(None, cuda_count=lambda: 2, cuda_label=lambda name: f"H100 {name}")
    assert [(d.key, d.kind, d.label) for d in two] == [
        ("cuda:0", "cuda", "H100 cuda:0"),
        ("cuda:1", "cuda", "H100 cuda:1"),
    ]
    cpus = discover_devices(["cpu", "cpu"], cuda_count=lambda: 0)
    assert [d.key for d in cpus] == ["cpu", "cpu#1"] and all(d.threads for d in cpus)
    explicit = discover_devices(None, explicit_device="cpu", cuda_count=lambda: 2, cuda_label=str)
    assert [d.key for d in explicit] == ["cpu"]
    with pytest.raises(ValueError, match=r"cuda:3 does not exist \(2 CUDA"):
        discover_devices(["cuda:3"], cuda_count=lambda: 2, cuda_label=str)


@pytest.mark.parametrize(
    ("configured", "kind", "cap"),
    [(None, "cpu", CPU_BATCH_TOKENS), (None, "cuda", CUDA_BATCH_TOKENS), (512, "cuda", 512), (100_000, "cpu", 100_000)],
)
def test_batch_cap_is_the_setting_else_the_default_of_the_device_kind(
    configured: int | None, kind: Literal["cpu", "cuda"], cap: int
) -> None:
    assert batch_token_cap(configured, Device(kind, kind, kind, "test")) == cap


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (MemoryError(), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_oom_classification(error: BaseException, expected: bool) -> None:
    assert is_oom(error) is expected


def test_pool_settings_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="'tpu' is not a device"):
        PoolSettings(devices=["tpu"])
    with pytest.raises(ValidationError, match="lists a GPU twice"):
        PoolSettings(devices=["cuda", "cuda:0"])
    with pytest.raises(ValidationError, match="is empty"):
        PoolSettings(devices=[])
    with pytest.raises(ValidationError, match=r"embedding\.pool\.precision: 'int4' is not one of auto, float32"):
        EmbeddingSettings.model_validate({"pool": {"precision": "int4"}})  # the deprecated key, still checked
    with pytest.raises(ValidationError, match=r"pool\.memory_fraction"):
        EmbeddingSettings.model_validate({"pool": {"memory_fraction": 1.5}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EmbeddingSettings.model_validate({"pool": {"batch_tokens": 5}})
    assert EmbeddingSettings.model_validate({"pool": {"devices": ["cpu", "cpu"]}}).pool.devices == ["cpu", "cpu"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("1", 1), ("4", 4), ("4,2", 4), (" 3 ", 3), ("0", None), ("-2", None), ("many", None), ("", None)],
)
def test_omp_num_threads_is_read_by_convention(value: str | None, expected: int | None) -> None:
    assert omp_threads({} if value is None else {"OMP_NUM_THREADS": value}) == expected


def test_omp_num_threads_bounds_the_cpu_workers_threads_unless_configured() -> None:
    one = discover_devices(None, cuda_count=lambda: 0, environ={"OMP_NUM_THREADS": "1"})
    assert [d.threads for d in one] == [1]
    # Two CPU workers share what OMP_NUM_THREADS allows (never fewer than one thread each).
    two = discover_devices(["cpu", "cpu"], cuda_count=lambda: 0, environ={"OMP_NUM_THREADS": "1"})
    assert [d.threads for d in two] == [1, 1]
    configured = discover_devices(None, cuda_count=lambda: 0, cpu_threads=3, environ={"OMP_NUM_THREADS": "1"})
    assert [d.threads for d in configured] == [3]
    unset = discover_devices(None, cuda_count=lambda: 0, environ={})
    assert [d.threads for d in unset] == [usable_cpus({})] and usable_cpus({}) >= 1


def test_no_gpu_driver_no_torch_import_to_count_gpus(tmp_path: Path) -> None:
    assert not gpu_driver_present([str(tmp_path / "nvidiactl")])
    (tmp_path / "nvidiactl").touch()
    assert gpu_driver_present([str(tmp_path / "nvidiactl"), str(tmp_path / "kfd")])
    code = (
        "import sys; from embedding.devices import discover_devices, gpu_driver_present; "
        "devices = discover_devices(None); "
        "print(devices[0].kind, 'torch' in sys.modules, gpu_driver_present())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    kind, torch_loaded, driver = done.stdout.split()
    if driver == "False":  # no driver: torch could see no GPU, and was not imported to learn it
        assert (kind, torch_loaded) == ("cpu", "False")
