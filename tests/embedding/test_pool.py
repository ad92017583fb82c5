"""The worker pool on the real model (CPU): faults come from wrappers around the real runner (out of memory,
a worker thread dying, a device that cannot load), memory from an injected probe, speed from an injected
clock. Ordering is proved by comparing every vector with the model's own output; nothing is timed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from embedding.budget import MemoryModel
from embedding.devices import Device
from embedding.model import Embedder, EmbeddingSettings, TextEmbedder
from embedding.pool import EmbeddingError, EmbeddingPool, Lane
from embedding.pool_worker import Worker
from embedding.runner import Runner, TorchRunner

WAIT = 120.0  # generous bound on waits on a shared 2-core machine; never reached when things work
GIB = 1 << 30
TEXTS = [
    f"Chunk {i}: " + " ".join(["alpha", "beta", "gamma", "delta"][i % 4] for _ in range(1 + 7 * (i % 9)))
    for i in range(48)
]


def cpu(key: str = "cpu") -> Device:
    return Device(key=key, torch_device="cpu", kind="cpu", label="test cpu")


class WorkerKilled(BaseException):
    """Not an Exception: nothing in the worker's batch handling catches it, so its thread dies."""


class Wrapped:
    """The real float32 model (shared, never reloaded), recording batches; subclasses inject faults."""

    def __init__(self, model: Any, device: Device, precision: str = "float32") -> None:
        self.inner = TorchRunner(Path("unused"), device, precision, model=model)
        self.device = device
        self.batches: list[list[str]] = []
        self.memory = MemoryModel(0.0, 16_000.0, 0.0, "test")

    def load(self) -> None:
        self.inner.load()

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return self.inner.forward(texts)

    def after_oom(self) -> None:
        self.inner.after_oom()

    def memory_model(self, max_seq_length: int) -> MemoryModel:
        return self.memory


class OomAbove(Wrapped):
    """Runs out of memory on batches of more than ``max_items`` chunks, the first ``times`` times."""

    def __init__(self, model: Any, device: Device, max_items: int, error: Exception, times: int = 10**6) -> None:
        super().__init__(model, device)
        self.max_items, self.error, self.times = max_items, error, times
        self.raised = 0

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) > self.max_items and self.raised < self.times:
            self.raised += 1
            raise self.error
        return super().forward(texts)


class DiesOnce(Wrapped):
    """Its worker thread dies mid-batch on the first batch (the model is left usable, as after a crash in
    the worker's own code)."""

    def __init__(self, model: Any, device: Device, deaths: int = 1) -> None:
        super().__init__(model, device)
        self.deaths = deaths

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        if self.deaths > 0:
            self.deaths -= 1
            self.batches.append(list(texts))
            raise WorkerKilled("killed mid-batch")
        return super().forward(texts)


class Gated(Wrapped):
    """Holds its first batch until released, so a test can queue work behind it."""

    def __init__(self, model: Any, device: Device) -> None:
        super().__init__(model, device)
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(WAIT)
        return super().forward(texts)


def make_pool(
    embedder: Embedder,
    runners: dict[str, Runner],
    *,
    devices: Sequence[Device] | None = None,
    probe: Callable[[Device], int] = lambda _device: 64 * GIB,
    **pool: Any,
) -> EmbeddingPool:
    settings = EmbeddingSettings.model_validate({"precision": "float32", "pool": pool})
    return EmbeddingPool(
        settings,
        embedder=embedder,
        devices=devices or [cpu()],
        probe=probe,
        runner_factory=lambda device, _precision: runners[device.key],
    )


@pytest.fixture(scope="module")
def reference(embedder: Embedder) -> np.ndarray:
    return embedder.embed(TEXTS)


def assert_same(vectors: np.ndarray, reference: np.ndarray) -> None:
    """Every row is the model's vector of the same text: order kept, nothing lost or swapped."""
    assert vectors.shape == reference.shape
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.9999


def test_pool_offers_the_embedder_surface_and_keeps_order(embedder: Embedder, reference: np.ndarray) -> None:
    runner = Wrapped(embedder.model, cpu())
    with make_pool(embedder, {"cpu": runner}, max_batch_tokens=512) as pool:
        surface: TextEmbedder = pool
        assert (surface.identity, surface.dimension, surface.max_seq_length) == (
            embedder.identity,
            384,
            embedder.max_seq_length,
        )
        assert surface.revision == embedder.revision and surface.settings.precision == "float32"
        assert_same(pool.embed(TEXTS), reference)
        assert pool.embed([]).shape == (0, 384)
        stats = pool.stats()
    assert len(runner.batches) > 1  # split by the 512-token budget
    assert sorted(t for b in runner.batches for t in b) == sorted(TEXTS)  # each chunk once
    lengths = embedder.tokenizer.count(TEXTS)
    by_text = dict(zip(TEXTS, lengths, strict=True))
    for batch in runner.batches:
        assert len(batch) * max(by_text[t] for t in batch) <= 512 or len(batch) == 1
    (device,) = stats.devices
    assert device.batches == len(runner.batches) and device.chunks == len(TEXTS)
    assert device.tokens == sum(lengths) and device.padded_tokens >= device.tokens and device.tokens_per_s > 0
    assert (stats.queued_chunks, stats.in_flight_chunks, stats.pending_requests, stats.duplicates) == (0, 0, 0, 0)


def test_budget_follows_probe_arithmetic(embedder: Embedder) -> None:
    runner = Wrapped(embedder.model, cpu())
    runner.memory = MemoryModel(fixed_bytes=1_000_000, per_token=1000.0, per_token_position=0.0, source="test")
    # (6 MB x 0.5 - 1 MB) / 1000 bytes = 2000 padded tokens; with every chunk counted as 100 tokens: 20 per batch
    with make_pool(embedder, {"cpu": runner}, probe=lambda _d: 6_000_000, memory_fraction=0.5) as pool:
        pool.embed(TEXTS, token_counts=[100] * len(TEXTS))
        (device,) = pool.stats().devices
    assert [len(b) for b in runner.batches] == [20, 20, 8]
    assert (device.budget_tokens, device.budget_ceiling) == (2000, 2000)
    # the configured cap wins where it is lower than what memory allows
    capped = Wrapped(embedder.model, cpu())
    capped.memory = runner.memory
    with make_pool(
        embedder, {"cpu": capped}, probe=lambda _d: 6_000_000, memory_fraction=0.5, max_batch_tokens=1000
    ) as pool:
        pool.embed(TEXTS, token_counts=[100] * len(TEXTS))
    assert [len(b) for b in capped.batches] == [10] * 4 + [8]


def test_memory_is_probed_again_after_an_oom(embedder: Embedder) -> None:
    runner = OomAbove(embedder.model, cpu(), max_items=0, error=torch.OutOfMemoryError("out of memory"), times=1)
    runner.memory = MemoryModel(fixed_bytes=1_000_000, per_token=1000.0, per_token_position=0.0, source="test")
    free = [6_000_000]

    def probe(_device: Device) -> int:
        seen = free[0]
        free[0] = 3_000_000  # another process took half of what was free
        return seen

    with make_pool(embedder, {"cpu": runner}, probe=probe, memory_fraction=0.5) as pool:
        pool.embed(TEXTS, token_counts=[100] * len(TEXTS))
        (device,) = pool.stats().devices
    # 2000 padded tokens at start; the OOM halves the failed batch of 20 and the probe lowers the ceiling
    # to (1.5 MB - 1 MB) / 1000 = 500 tokens: 5 chunks per batch from then on
    assert runner.raised == 1 and device.budget_ceiling == 500
    assert [len(b) for b in runner.batches] == [5] * 9 + [3]


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
)
def test_oom_splits_shrinks_regrows_and_loses_nothing(
    embedder: Embedder, reference: np.ndarray, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    runner = OomAbove(embedder.model, cpu(), max_items=6, error=error)
    caplog.set_level(logging.WARNING, logger="embedding.pool")
    with make_pool(embedder, {"cpu": runner}, max_batch_tokens=8192, regrow_after=2, regrow_factor=2) as pool:
        vectors = pool.embed(TEXTS)
        (device,) = pool.stats().devices
        assert pool.stats().duplicates == 0
    assert_same(vectors, reference)
    done = [t for b in runner.batches for t in b]
    assert sorted(done) == sorted(TEXTS)  # every chunk embedded exactly once
    assert all(len(b) <= 6 for b in runner.batches)
    assert device.ooms == device.shrinks == runner.raised >= 2  # 48 chunks -> 24 -> ... -> <= 6
    assert device.regrows >= 1  # grew back after 2 successes, and shrank again on the next OOM
    shrink_logs = [r for r in caplog.records if "out of memory on cpu" in r.getMessage()]
    assert len(shrink_logs) == device.shrinks
    assert "budget" in shrink_logs[0].getMessage()


def test_budget_grows_back_to_the_ceiling_after_a_transient_oom(embedder: Embedder, reference: np.ndarray) -> None:
    runner = OomAbove(embedder.model, cpu(), max_items=0, error=torch.OutOfMemoryError("out of memory"), times=1)
    with make_pool(embedder, {"cpu": runner}, max_batch_tokens=2048, regrow_after=1, regrow_factor=2) as pool:
        assert_same(pool.embed(TEXTS), reference)
        (device,) = pool.stats().devices
    assert (device.shrinks, device.ooms) == (1, 1)
    assert device.regrows >= 1 and device.budget_tokens == device.budget_ceiling == 2048


def test_a_chunk_that_never_fits_fails_its_request_with_the_cause(embedder: Embedder) -> None:
    runner = OomAbove(embedder.model, cpu(), max_items=0, error=torch.OutOfMemoryError("CUDA out of memory"))
    with make_pool(embedder, {"cpu": runner}, max_attempts=2) as pool:
        with pytest.raises(EmbeddingError, match=r"chunk 0 \(\d+ tokens\) failed 2 times; last: out of memory on cpu"):
            pool.embed(["one chunk too many"])
        assert pool.stats().pending_requests == 0


def test_a_worker_dying_mid_batch_is_restarted_and_its_batch_redone(embedder: Embedder, reference: np.ndarray) -> None:
    runner = DiesOnce(embedder.model, cpu())
    with make_pool(embedder, {"cpu": runner}, max_batch_tokens=1024) as pool:
        vectors = pool.embed(TEXTS)
        (device,) = pool.stats().devices
        again = pool.embed(TEXTS[:3])  # the restarted worker keeps serving
    assert_same(vectors, reference)
    assert_same(again, reference[:3])
    killed = runner.batches[0]
    assert sum(b == killed for b in runner.batches) == 2  # the dead worker's batch, done once more
    assert (device.crashes, device.restarts, device.state) == (1, 1, "ready")
    assert "WorkerKilled" in (device.error or "")


def test_crashed_batches_go_to_the_other_worker_when_one_device_keeps_dying(
    embedder: Embedder, reference: np.ndarray
) -> None:
    bad = DiesOnce(embedder.model, cpu("cpu"), deaths=10**6)
    good = Wrapped(embedder.model, cpu("cpu#1"))
    devices = [cpu("cpu"), cpu("cpu#1")]
    with make_pool(
        embedder, {"cpu": bad, "cpu#1": good}, devices=devices, max_batch_tokens=1024, max_restarts=1, max_attempts=5
    ) as pool:
        assert_same(pool.embed(TEXTS), reference)
        stats = {d.key: d for d in pool.stats().devices}
    assert stats["cpu"].state == "retired" and stats["cpu"].crashes == 2 and stats["cpu"].chunks == 0
    assert stats["cpu#1"].chunks == len(TEXTS)
    assert sorted(t for b in good.batches for t in b) == sorted(TEXTS)


def test_work_is_spread_over_two_workers(embedder: Embedder, reference: np.ndarray) -> None:
    both = threading.Barrier(2, timeout=WAIT)

    class Meets(Wrapped):
        def forward(self, texts: Sequence[str]) -> np.ndarray:
            if not self.batches:
                both.wait()  # each worker holds a batch at the same time
            return super().forward(texts)

    runners: dict[str, Runner] = {"cpu": Meets(embedder.model, cpu()), "cpu#1": Meets(embedder.model, cpu("cpu#1"))}
    with make_pool(embedder, runners, devices=[cpu(), cpu("cpu#1")], max_batch_tokens=512) as pool:
        assert_same(pool.embed(TEXTS), reference)
        stats = pool.stats()
    assert all(d.chunks > 0 for d in stats.devices)
    assert sum(d.chunks for d in stats.devices) == len(TEXTS)


def test_the_low_latency_lane_is_served_before_queued_bulk_work(embedder: Embedder, reference: np.ndarray) -> None:
    runner = Gated(embedder.model, cpu())
    with make_pool(embedder, {"cpu": runner}, max_batch_items=4, small_request_tokens=64) as pool:
        bulk = pool.submit(TEXTS)  # > 64 tokens: the bulk lane
        assert bulk.lane is Lane.BULK
        assert runner.entered.wait(WAIT)  # the worker holds the first bulk batch
        urgent = pool.submit(["where is the on-demand document?"])
        assert urgent.lane is Lane.INTERACTIVE
        stats = pool.stats()
        assert (stats.queued_interactive, stats.queued_bulk, stats.in_flight_chunks) == (1, len(TEXTS) - 4, 4)
        assert stats.load == len(TEXTS) + 1  # the scaling signal: queued + in flight
        runner.release.set()
        assert urgent.result(WAIT).shape == (1, 384)
        assert_same(bulk.result(WAIT), reference)
    assert runner.batches[1] == ["where is the on-demand document?"]
    assert len(runner.batches) == 1 + 1 + len(TEXTS) // 4 - 1


def test_a_device_that_cannot_load_fails_requests_with_its_error(embedder: Embedder) -> None:
    class Broken(Wrapped):
        def load(self) -> None:
            raise RuntimeError("model.safetensors: no such file")

    with make_pool(embedder, {"cpu": Broken(embedder.model, cpu())}) as pool:
        with pytest.raises(EmbeddingError, match=r"no embedding device is usable: cpu: RuntimeError: model.safe"):
            pool.embed(TEXTS[:2])
        with pytest.raises(EmbeddingError, match="no embedding device is usable"):
            pool.submit(TEXTS[:2])


def test_close_fails_what_is_still_queued(embedder: Embedder) -> None:
    runner = Gated(embedder.model, cpu())
    pool = make_pool(embedder, {"cpu": runner}, max_batch_items=4)
    request = pool.submit(TEXTS)
    assert runner.entered.wait(WAIT)
    closer = threading.Thread(target=pool.close)
    closer.start()
    with pytest.raises(EmbeddingError, match="closed before this request"):
        request.result(WAIT)
    runner.release.set()
    closer.join(WAIT)
    with pytest.raises(EmbeddingError, match="closed"):
        pool.submit(TEXTS[:1])


def test_settings_and_embedder_must_name_the_same_model(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match=r"embedding.model '/elsewhere' differs"):
        EmbeddingPool(EmbeddingSettings(model="/elsewhere"), embedder=embedder)


def test_configured_precision_is_followed_without_calibration_and_reported(embedder: Embedder) -> None:
    built: list[str] = []

    def factory(device: Device, precision: str) -> Runner:
        built.append(precision)
        return Wrapped(embedder.model, device, precision)

    settings = EmbeddingSettings(precision="bfloat16")
    with EmbeddingPool(settings, embedder=embedder, devices=[cpu()], runner_factory=factory) as pool:
        vectors = pool.embed(TEXTS[:4])
        assert pool.precision_choices()["cpu"].reason == "configured"
        assert pool.stats().devices[0].precision == "bfloat16"
    assert built == ["bfloat16"]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # renormalised in float32


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """CPU workers set torch's thread count, which threads started later inherit: restore it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("torch_threads")
def test_two_real_cpu_workers_from_settings(embedder: Embedder, reference: np.ndarray) -> None:
    """The default path: devices from settings, models loaded from safetensors per worker, memory
    calibrated (analytic estimate checked against the resident set), real probe."""
    settings = EmbeddingSettings.model_validate(
        {"precision": "float32", "pool": {"devices": ["cpu", "cpu"], "max_batch_tokens": 1024}}
    )
    with EmbeddingPool(settings, embedder=embedder) as pool:
        assert_same(pool.embed(TEXTS), reference)
        stats = pool.stats()
    assert [d.key for d in stats.devices] == ["cpu", "cpu#1"]
    assert sum(d.chunks for d in stats.devices) == len(TEXTS)
    for device in stats.devices:
        assert device.state == "ready" and device.budget_ceiling == 1024


# -- Prometheus metrics (telemetry.metrics), read from the process's registry: compared before/after, since
# other tests in this process record into the same children.


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lane_gauges() -> dict[str, float]:
    return {
        f"{what}:{lane}": sample(f"ragline_embedding_{what}", lane=lane)
        for what in ("queue_depth", "in_flight_chunks")
        for lane in ("interactive", "bulk")
    }


class Ticks:
    """A clock that moves one second per reading: each batch takes exactly 1 s."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_device_gauges_after_a_real_embed(embedder: Embedder) -> None:
    device = cpu("cpu#metrics")
    runner = Wrapped(embedder.model, device)
    runner.memory = MemoryModel(fixed_bytes=1_000_000, per_token=1000.0, per_token_position=0.0, source="test")
    settings = EmbeddingSettings.model_validate({"precision": "float32", "pool": {"memory_fraction": 0.5}})
    with EmbeddingPool(
        settings,
        embedder=embedder,
        devices=[device],
        probe=lambda _d: 6_000_000,
        runner_factory=lambda _device, _precision: runner,
        clock=Ticks(),
    ) as pool:
        pool.embed(TEXTS, token_counts=[100] * len(TEXTS))
    assert [len(b) for b in runner.batches] == [20, 20, 8]
    key = {"device": "cpu#metrics"}
    assert sample("ragline_embedding_batch_tokens", **key) == 800  # the last batch: 8 chunks x 100 tokens
    # weighted sums: tokens 2000, 2000, then 2000 + 0.1 x (800 - 2000); seconds 1 each
    assert sample("ragline_embedding_tokens_per_second", **key) == pytest.approx(1880.0)
    # (6 MB x 0.5 - 1 MB) / 1000 bytes = 2000 padded tokens, priced back: 1 MB + 2000 x 1000 bytes
    assert sample("ragline_embedding_budget_bytes", **key) == 3_000_000
    assert REGISTRY.get_sample_value("ragline_embedding_allocated_bytes", key) is None  # GPU workers only


def test_lane_gauges_are_the_scaling_signal_while_work_waits(embedder: Embedder, reference: np.ndarray) -> None:
    runner = Gated(embedder.model, cpu())
    before = lane_gauges()
    with make_pool(embedder, {"cpu": runner}, max_batch_items=4, small_request_tokens=64) as pool:
        bulk = pool.submit(TEXTS)
        assert runner.entered.wait(WAIT)  # the worker holds the first bulk batch of 4
        urgent = pool.submit(["where is the on-demand document?"])
        during = lane_gauges()
        runner.release.set()
        urgent.result(WAIT)
        assert_same(bulk.result(WAIT), reference)
        after = lane_gauges()
    assert {k: during[k] - before[k] for k in during} == {
        "queue_depth:interactive": 1,
        "queue_depth:bulk": len(TEXTS) - 4,
        "in_flight_chunks:interactive": 0,
        "in_flight_chunks:bulk": 4,
    }
    assert after == before


def test_oom_shrinks_and_regrows_are_counted_with_the_budget(embedder: Embedder) -> None:
    device = cpu("cpu#oom-metrics")
    runner = OomAbove(embedder.model, device, max_items=6, error=torch.OutOfMemoryError("out of memory"))
    key = {"device": "cpu#oom-metrics"}
    shrinks = sample("ragline_embedding_oom_shrinks_total", **key)
    regrows = sample("ragline_embedding_regrows_total", **key)
    with make_pool(
        embedder, {device.key: runner}, devices=[device], max_batch_tokens=8192, regrow_after=2, regrow_factor=2
    ) as pool:
        pool.embed(TEXTS)
        (stats,) = pool.stats().devices
    assert stats.shrinks >= 2 and stats.regrows >= 1 and stats.budget_tokens is not None
    assert sample("ragline_embedding_oom_shrinks_total", **key) - shrinks == stats.shrinks
    assert sample("ragline_embedding_regrows_total", **key) - regrows == stats.regrows
    # the runner's memory model: 16 kB per padded token, nothing fixed, far below the probed 64 GiB
    assert sample("ragline_embedding_budget_bytes", **key) == stats.budget_tokens * 16_000


def test_a_gpu_worker_reports_what_torch_holds_when_scraped() -> None:
    worker = Worker(Device(key="cuda:9", torch_device="cuda:9", kind="cuda", label="test gpu"))
    worker.metrics.watch_cuda(worker.device.torch_device)
    value = REGISTRY.get_sample_value("ragline_embedding_allocated_bytes", {"device": "cuda:9"})
    assert value == (torch.cuda.memory_allocated("cuda:9") if torch.cuda.is_available() else 0.0)
