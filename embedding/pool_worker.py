"""One pool worker's state: its device, the model loaded there, the token budget that free memory and
out-of-memory errors set, the batch in hand and the counters. The pool changes it under its lock and runs the
worker's thread (``EmbeddingPool._run``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from embedding.budget import BudgetController, MemoryModel
from embedding.calibrate import Calibrated
from embedding.devices import Device, batch_token_cap
from embedding.pool_metrics import DeviceMetrics
from embedding.pool_queue import Item
from embedding.pool_settings import PoolSettings
from embedding.pool_stats import Counters, DeviceStats, device_stats
from embedding.precision import PrecisionChoice
from embedding.runner import Runner


@dataclass(eq=False)
class Worker:
    device: Device
    state: Literal["starting", "ready", "retired", "stopped"] = "starting"
    runner: Runner | None = None
    precision: PrecisionChoice | None = None
    memory: MemoryModel | None = None
    usable_bytes: float = 0.0
    controller: BudgetController | None = None
    thread: threading.Thread | None = None
    in_flight: list[Item] | None = None
    counters: Counters = field(default_factory=Counters)
    error: str | None = None
    metrics: DeviceMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = DeviceMetrics(self.device.key)

    def budget(self, length: int) -> int:
        """Padded tokens a batch of chunks padded to ``length`` may have now."""
        assert self.controller is not None and self.memory is not None
        return max(1, min(self.controller.limit, self.memory.max_padded_tokens(self.usable_bytes, length)))

    def budget_bytes(self, length: int) -> float:
        """Memory one batch may take now, by the memory model: the budget at padded length ``length`` (the
        model's window: the most a batch is planned for), priced per token and per token and position."""
        assert self.memory is not None
        tokens = self.budget(length)
        m = self.memory
        return m.fixed_bytes + tokens * (m.per_token + m.per_token_position * length)

    def ready(self, calibrated: Calibrated, usable: float, pool: PoolSettings) -> None:
        """Calibrated, with ``usable`` bytes free for batches: its budget starts at the ceiling."""
        self.runner, self.precision, self.memory = calibrated.runner, calibrated.choice, calibrated.memory
        self.usable_bytes = usable
        self.controller = BudgetController(self._ceiling(pool), pool.regrow_after, pool.regrow_factor)
        self.state = "ready"
        if self.device.kind == "cuda":
            self.metrics.watch_cuda(self.device.torch_device)

    def set_usable(self, usable: float, pool: PoolSettings) -> None:
        """Free memory probed again (others may have taken or freed some): the ceiling moves with it."""
        assert self.controller is not None
        self.usable_bytes = usable
        self.controller.set_ceiling(self._ceiling(pool))

    def _ceiling(self, pool: PoolSettings) -> int:
        """The most padded tokens per batch: the configured cap, or less where free memory allows less."""
        assert self.memory is not None
        cap = batch_token_cap(pool.max_batch_tokens, self.device)
        return max(1, min(cap, self.memory.max_padded_tokens(self.usable_bytes, 1)))

    def crashed(self, error: BaseException, max_restarts: int) -> bool:
        """Count a crash of the thread; True when the device is to be retired: it failed to start, or crashed
        more than ``max_restarts`` times in a row."""
        self.counters.crashes += 1
        self.counters.crash_streak += 1
        self.error = f"{type(error).__name__}: {error}"
        return self.state == "starting" or self.counters.crash_streak > max_restarts

    def stats(self) -> DeviceStats:
        precision = self.precision.precision if self.precision else None
        return device_stats(self.device.key, self.state, precision, self.counters, self.controller, self.error)
