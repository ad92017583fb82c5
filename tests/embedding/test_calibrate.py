"""Calibrating a device (``embedding.calibrate``) on the real model: the precision as configured, the only
candidate, or measured against float32 on a fake clock and cached; the memory model cached beside it. Runners
are the real ``TorchRunner`` sharing the session's model (``bfloat16`` casts a copy for real)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from embedding.budget import MemoryModel
from embedding.calibrate import DeviceCalibrator
from embedding.calibration_text import QUERIES, calibration_texts
from embedding.devices import Device
from embedding.int8_support import Int8Support
from embedding.model import Embedder
from embedding.pool_settings import PoolSettings
from embedding.precision import CalibrationCache, Thresholds
from embedding.runner import Runner, TorchRunner

CPU = Device(key="cpu", torch_device="cpu", kind="cpu", label="test cpu", threads=2)


def no_extra(name: str) -> ModuleType:
    """An importer as if the int8 extra were not installed: these tests are about the torch precisions
    (int8's calibration is tests/embedding/test_int8.py's)."""
    raise ImportError(f"No module named {name!r}")


class Timed(TorchRunner):
    """A real runner whose speed is set on a fake clock, and whose memory model is made up (and counted)."""

    def __init__(self, model: Any, precision: str, clock: list[float], cost: float) -> None:
        super().__init__(Path("unused"), CPU, precision, model=model)
        self.clock, self.cost = clock, cost
        self.memory_calls = 0

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        self.clock[0] += self.cost * len(texts)
        return super().forward(texts)

    def memory_model(self, max_seq_length: int) -> MemoryModel:
        self.memory_calls += 1
        return MemoryModel(1000.0, 16_000.0, 0.0, f"test at {self.precision}")


class Built:
    """A runner factory that records what it built."""

    def __init__(self, embedder: Embedder, cost: dict[str, float]) -> None:
        self.embedder, self.cost = embedder, cost
        self.now = [0.0]
        self.built: list[Timed] = []

    def __call__(self, device: Device, precision: str) -> Runner:
        runner = Timed(self.embedder.model, precision, self.now, self.cost[precision])
        self.built.append(runner)
        return runner

    @property
    def precisions(self) -> list[str]:
        return [r.precision for r in self.built]


def calibrator(
    embedder: Embedder,
    factory: Built,
    cache: Path | None,
    *,
    precision: str = "auto",
    cpu_bf16: bool = True,
    pool: PoolSettings | None = None,
) -> DeviceCalibrator:
    return DeviceCalibrator(
        embedder,
        precision,
        pool or PoolSettings(),
        factory,
        CalibrationCache(cache),
        texts=[t for t in calibration_texts() if len(t) < 400][:40],
        queries=QUERIES[:5],
        rounds=1,
        clock=lambda: factory.now[0],
        cpu_bf16=cpu_bf16,
        int8=Int8Support(importer=no_extra),
    )


def test_auto_precision_is_measured_chosen_and_cached(embedder: Embedder, tmp_path: Path) -> None:
    factory = Built(embedder, {"float32": 1.0, "bfloat16": 0.4, "autocast-bfloat16": 0.5})
    calibrated = calibrator(embedder, factory, tmp_path / "cal").prepare(CPU)
    choice = calibrated.choice
    # bf16 on the fake clock is 2.5x faster, and its real vectors keep quality (cosine and neighbours)
    assert (choice.precision, choice.cached) == ("bfloat16", False)
    measured = {m.precision: m for m in choice.measurements}
    assert measured["bfloat16"].tokens_per_s == pytest.approx(2.5 * measured["float32"].tokens_per_s)
    assert measured["bfloat16"].min_cosine >= 0.999 and measured["bfloat16"].neighbour_overlap >= 0.95
    assert "2.50x float32" in choice.summary()
    assert factory.precisions == ["float32", "bfloat16", "autocast-bfloat16", "bfloat16"]  # candidates, the choice
    assert calibrated.runner is factory.built[-1] and calibrated.memory.source == "test at bfloat16"
    assert len(list((tmp_path / "cal").glob("precision-*.json"))) == 1
    assert len(list((tmp_path / "cal").glob("memory-*.json"))) == 1

    again_factory = Built(embedder, factory.cost)  # a second start reads the cache: nothing is measured
    again = calibrator(embedder, again_factory, tmp_path / "cal").prepare(CPU)
    assert (again.choice.precision, again.choice.cached, again_factory.precisions) == ("bfloat16", True, ["bfloat16"])
    assert again.memory == calibrated.memory and again_factory.built[0].memory_calls == 0


@pytest.mark.parametrize(
    ("precision", "cpu_bf16", "reason"),
    [
        ("float16", True, "configured"),
        ("auto", False, "the only candidate on this device"),  # bf16 without AMX: float32 alone is tried
    ],
)
def test_no_calibration_without_a_choice_to_make(
    embedder: Embedder, precision: str, cpu_bf16: bool, reason: str
) -> None:
    factory = Built(embedder, {"float32": 1.0, "float16": 1.0})
    calibrated = calibrator(embedder, factory, None, precision=precision, cpu_bf16=cpu_bf16).prepare(CPU)
    chosen = "float32" if precision == "auto" else precision
    assert (calibrated.choice.precision, calibrated.choice.reason) == (chosen, reason)
    assert factory.precisions == [chosen] and factory.now == [0.0]  # one runner, never timed


def test_cache_keys_change_with_what_changes_the_answer(embedder: Embedder) -> None:
    cal = calibrator(embedder, Built(embedder, {}), None)
    bars, names, texts = Thresholds(), ["float32", "bfloat16"], ["a", "b"]
    key = cal.precision_key(CPU, names, ["q"], texts, bars)
    assert key == cal.precision_key(CPU, list(names), ["q"], list(texts), Thresholds())
    others = [
        cal.precision_key(CPU, names, ["q"], ["a", "c"], bars),  # another calibration set
        cal.precision_key(CPU, names, ["q?"], texts, bars),
        cal.precision_key(CPU, names, ["q"], texts, Thresholds(min_speedup=1.5)),
        cal.precision_key(CPU, ["float32"], ["q"], texts, bars),
        cal.precision_key(Device("cpu", "cpu", "cpu", "test cpu", threads=4), names, ["q"], texts, bars),
        cal.precision_key(Device("cpu", "cpu", "cpu", "other cpu", threads=2), names, ["q"], texts, bars),
    ]
    assert all(other != key for other in others)
    assert key["model"] == embedder.revision
    assert cal.memory_key(CPU, "float32") != cal.memory_key(CPU, "bfloat16")
    assert cal.memory_key(CPU, "float32")["max_seq_length"] == embedder.max_seq_length


@pytest.mark.parametrize(("cpu_bf16", "default"), [(True, "bfloat16"), (False, "float32")])
def test_cached_only_starts_at_the_default_and_uses_a_calibration_once_cached(
    embedder: Embedder, tmp_path: Path, cpu_bf16: bool, default: str
) -> None:
    """A run does not wait for a measurement: without a cached choice it starts at the device's default;
    once a calibration is cached (by ``ragline serve``) it uses it."""
    lazy = PoolSettings(calibrate="cached_only")
    factory = Built(embedder, {"float32": 1.0, "bfloat16": 0.4, "autocast-bfloat16": 0.5})
    first = calibrator(embedder, factory, tmp_path / "cal", cpu_bf16=cpu_bf16, pool=lazy).prepare(CPU)
    reason = "not calibrated yet" if cpu_bf16 else "the only candidate"  # no AMX: nothing to measure anyway
    assert first.choice.precision == default and reason in first.choice.reason
    assert factory.precisions == [default] and factory.now == [0.0]  # nothing measured
    assert not list((tmp_path / "cal").glob("precision-*.json"))
    if cpu_bf16:
        calibrator(embedder, Built(embedder, factory.cost), tmp_path / "cal").prepare(CPU)  # serve measures
        after = Built(embedder, factory.cost)
        cached = calibrator(embedder, after, tmp_path / "cal", pool=lazy).prepare(CPU)
        assert (cached.choice.precision, cached.choice.cached, after.precisions) == ("bfloat16", True, ["bfloat16"])
