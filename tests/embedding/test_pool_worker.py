"""A worker's budget arithmetic and crash accounting, without a thread."""

from __future__ import annotations

from pathlib import Path

from embedding.budget import MemoryModel
from embedding.calibrate import Calibrated
from embedding.devices import CPU_BATCH_TOKENS, Device
from embedding.pool_settings import PoolSettings
from embedding.pool_worker import Worker
from embedding.precision import PrecisionChoice
from embedding.runner import TorchRunner

CPU = Device("cpu", "cpu", "cpu", "test cpu")
MEMORY = MemoryModel(fixed_bytes=1_000_000, per_token=1000.0, per_token_position=0.0, source="test")


def ready(usable: float, pool: PoolSettings) -> Worker:
    worker = Worker(CPU)
    runner = TorchRunner(Path("unused"), CPU, "float32")  # never loaded: the worker only keeps it
    worker.ready(Calibrated(PrecisionChoice("float32", "configured"), runner, MEMORY), usable, pool)
    return worker


def test_the_ceiling_is_the_cap_or_what_free_memory_allows_whichever_is_lower() -> None:
    roomy = ready(1e12, PoolSettings())
    assert roomy.state == "ready" and roomy.controller is not None
    assert roomy.controller.ceiling == CPU_BATCH_TOKENS == roomy.budget(100)
    pool = PoolSettings(max_batch_tokens=4000)
    tight = ready(3_000_000, pool)  # (3 MB - 1 MB) / 1000 bytes per token
    assert tight.controller is not None and tight.controller.ceiling == 2000
    tight.set_usable(1_500_000, pool)  # others took memory: the ceiling follows
    assert tight.controller.ceiling == 500 and tight.budget(100) == 500
    tight.set_usable(1e12, pool)
    assert tight.controller.ceiling == 4000


def test_a_worker_is_retired_when_it_cannot_start_or_keeps_crashing() -> None:
    starting = Worker(CPU)
    assert starting.crashed(RuntimeError("no weights"), max_restarts=5)
    assert starting.error == "RuntimeError: no weights"
    worker = ready(1e12, PoolSettings())
    assert [worker.crashed(RuntimeError("boom"), max_restarts=2) for _ in range(3)] == [False, False, True]
    worker.counters.record_batch(chunks=1, tokens=10, padded=10, elapsed=0.1)  # a success ends the streak
    assert not worker.crashed(RuntimeError("boom"), max_restarts=2)
    stats = worker.stats()
    assert (stats.key, stats.state, stats.precision, stats.crashes) == ("cpu", "ready", "float32", 4)
