"""GPU telemetry through NVML (``nvidia-ml-py``): utilisation, memory, temperature and power per device, read
when Prometheus scrapes (a custom collector), so the figures are as fresh as the scrape and cost nothing
between scrapes. They sit beside the embedding pool's own view (``ragline_embedding_budget_bytes``,
``ragline_embedding_allocated_bytes``): NVML sees every process on the device, the pool only its own tensors,
and running out of device memory is what destabilises a GPU host.

No GPU, no driver (``nvmlInit`` fails): nothing is reported and nothing fails, one debug line says why. A
device that does not support one query (power on many consumer and virtual GPUs) still reports the others.
The NVML library is injected (``nvml``, ``pynvml`` by default) so tests pass an object with the same functions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

log = logging.getLogger(__name__)

LABELS = ("device", "name", "uuid")
"""``device`` is NVML's index (PCI bus order, which CUDA_VISIBLE_DEVICES may renumber); ``uuid`` is stable."""

_FAMILIES: tuple[tuple[str, str], ...] = (
    ("ragline_gpu_utilization_ratio", "Share of the last sample period a kernel ran on the device (0-1)."),
    ("ragline_gpu_memory_used_bytes", "Device memory in use, by every process on the device."),
    ("ragline_gpu_memory_free_bytes", "Device memory free."),
    ("ragline_gpu_memory_total_bytes", "Device memory installed."),
    ("ragline_gpu_temperature_celsius", "Temperature of the GPU die."),
    ("ragline_gpu_power_watts", "Power drawn by the device and its memory."),
)


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class GpuCollector(Collector):
    """Yields the ``ragline_gpu_*`` gauges, one sample per device and figure NVML could read at collect time."""

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: nvmlInit not tried yet; False: no NVML here, for good
        self._unsupported: set[tuple[int, str]] = set()  # (device, query) already logged

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families without samples: registering the collector must not initialise NVML."""
        return [GaugeMetricFamily(name, text, labels=LABELS) for name, text in _FAMILIES]

    def _init(self) -> bool:
        with self._lock:
            if self._ready is None:
                try:
                    self._nvml.nvmlInit()
                    self._ready = True
                except self._nvml.NVMLError as err:  # no driver, no GPU: a normal CPU host
                    log.debug("no GPU telemetry: NVML is not available here (%s)", err)
                    self._ready = False
            return self._ready

    def _query(self, index: int, what: str, read: Callable[[], Any]) -> Any:
        """One NVML call; an unsupported or failing query is skipped (logged once per device and query)."""
        try:
            return read()
        except self._nvml.NVMLError as err:
            if (index, what) not in self._unsupported:
                self._unsupported.add((index, what))
                log.debug("GPU %d: no %s from NVML (%s)", index, what, err)
            return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, text, labels=LABELS) for name, text in _FAMILIES}
        if self._init():
            nvml = self._nvml
            count = self._query(-1, "device count", nvml.nvmlDeviceGetCount) or 0
            for index in range(count):
                handle = self._query(index, "handle", partial(nvml.nvmlDeviceGetHandleByIndex, index))
                if handle is None:
                    continue
                name = self._query(index, "name", partial(nvml.nvmlDeviceGetName, handle))
                uuid = self._query(index, "uuid", partial(nvml.nvmlDeviceGetUUID, handle))
                labels = [str(index), _text(name or ""), _text(uuid or "")]
                for family, value in self._read(index, handle):
                    families[family].add_metric(labels, value)
        yield from families.values()

    def _read(self, index: int, handle: Any) -> Iterator[tuple[str, float]]:
        nvml = self._nvml
        rates = self._query(index, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        if rates is not None:
            yield "ragline_gpu_utilization_ratio", rates.gpu / 100.0
        memory = self._query(index, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is not None:
            yield "ragline_gpu_memory_used_bytes", float(memory.used)
            yield "ragline_gpu_memory_free_bytes", float(memory.free)
            yield "ragline_gpu_memory_total_bytes", float(memory.total)
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        celsius = self._query(index, "temperature", lambda: nvml.nvmlDeviceGetTemperature(handle, sensor))
        if celsius is not None:
            yield "ragline_gpu_temperature_celsius", float(celsius)
        milliwatts = self._query(index, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        if milliwatts is not None:
            yield "ragline_gpu_power_watts", milliwatts / 1000.0


_registered: GpuCollector | None = None


def register(registry: CollectorRegistry = REGISTRY) -> GpuCollector:
    """Register the collector with the process's registry once (``ragline serve`` serves it at /metrics; a
    pushed run carries it too); later calls return the same collector."""
    global _registered
    if _registered is None:
        _registered = GpuCollector()
        registry.register(_registered)
    return _registered
