"""The NVML collector with an injected NVML library (this machine has no GPU): what a scrape reports for two
devices, one of which cannot report its power; and nothing at all, without an error, where NVML is missing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from telemetry.gpu import GpuCollector


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


GIB = 1 << 30


@dataclass
class FakeNvml:
    """pynvml's functions over a table of devices; a device without ``power`` raises NotSupported for it."""

    devices: list[dict[str, Any]]
    init_error: NVMLError | None = None
    calls: list[str] = field(default_factory=list)
    NVMLError: type[NVMLError] = NVMLError
    NVML_TEMPERATURE_GPU: int = 0

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> bytes:
        return str(handle["name"]).encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:
        return str(handle["uuid"])

    def nvmlDeviceGetUtilizationRates(self, handle: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(gpu=handle["util"], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(total=handle["total"], used=handle["used"], free=handle["total"] - handle["used"])

    def nvmlDeviceGetTemperature(self, handle: dict[str, Any], sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return int(handle["temp"])

    def nvmlDeviceGetPowerUsage(self, handle: dict[str, Any]) -> int:
        if "power_mw" not in handle:
            raise NVMLError_NotSupported("Not Supported")
        return int(handle["power_mw"])


TWO = [
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa", "util": 87, "total": 80 * GIB, "used": 61 * GIB,
     "temp": 64, "power_mw": 412_500},
    {"name": "NVIDIA L4", "uuid": "GPU-bbbb", "util": 0, "total": 24 * GIB, "used": 1 * GIB, "temp": 35},
]  # fmt: skip


def _samples(collector: GpuCollector) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["device"]): s.value for family in collector.collect() for s in family.samples}


def test_two_devices_report_every_figure_they_support(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml(TWO)
    collector = GpuCollector(nvml)
    caplog.set_level(logging.DEBUG, logger="telemetry.gpu")
    got = _samples(collector)
    assert got == {
        ("ragline_gpu_utilization_ratio", "0"): 0.87,
        ("ragline_gpu_memory_used_bytes", "0"): 61 * GIB,
        ("ragline_gpu_memory_free_bytes", "0"): 19 * GIB,
        ("ragline_gpu_memory_total_bytes", "0"): 80 * GIB,
        ("ragline_gpu_temperature_celsius", "0"): 64,
        ("ragline_gpu_power_watts", "0"): 412.5,
        ("ragline_gpu_utilization_ratio", "1"): 0.0,
        ("ragline_gpu_memory_used_bytes", "1"): 1 * GIB,
        ("ragline_gpu_memory_free_bytes", "1"): 23 * GIB,
        ("ragline_gpu_memory_total_bytes", "1"): 24 * GIB,
        ("ragline_gpu_temperature_celsius", "1"): 35,
    }
    unsupported = [r.getMessage() for r in caplog.records]
    assert unsupported == ["GPU 1: no power from NVML (Not Supported)"]

    # Scraped again: fresh readings, NVML initialised once, the unsupported query not logged again.
    nvml.devices[0]["used"] = 70 * GIB
    assert _samples(collector)[("ragline_gpu_memory_used_bytes", "0")] == 70 * GIB
    assert nvml.calls == ["init"] and len(caplog.records) == 1


def test_the_exposition_labels_devices_by_index_name_and_uuid() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml(TWO)))
    text = generate_latest(registry).decode()
    assert 'ragline_gpu_power_watts{device="0",name="NVIDIA H100 80GB HBM3",uuid="GPU-aaaa"} 412.5' in text
    assert 'ragline_gpu_memory_total_bytes{device="1",name="NVIDIA L4",uuid="GPU-bbbb"} 2.5769803776e+10' in text
    assert 'ragline_gpu_power_watts{device="1"' not in text
    assert "# TYPE ragline_gpu_utilization_ratio gauge" in text


def test_registering_does_not_touch_nvml() -> None:
    nvml = FakeNvml(TWO)
    CollectorRegistry().register(GpuCollector(nvml))
    assert nvml.calls == []


def test_no_nvml_library_reports_nothing_and_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml(TWO, init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    collector = GpuCollector(nvml)
    caplog.set_level(logging.DEBUG, logger="telemetry.gpu")
    assert _samples(collector) == {} and _samples(collector) == {}
    assert nvml.calls == ["init"]  # not retried at every scrape
    assert [r.getMessage() for r in caplog.records] == [
        "no GPU telemetry: NVML is not available here (NVML Shared Library Not Found)"
    ]
    registry = CollectorRegistry()
    registry.register(collector)
    assert "ragline_gpu_memory_used_bytes{" not in generate_latest(registry).decode()


def test_the_real_pynvml_on_this_machine_reports_what_it_finds() -> None:
    """The default library: on a host without a GPU driver nvmlInit fails and nothing is reported."""
    import pynvml

    try:
        pynvml.nvmlInit()
        devices = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        devices = 0
    got = _samples(GpuCollector())
    assert {device for _, device in got} == {str(i) for i in range(devices)}
