"""What the worker pool reports (``EmbeddingPool.stats()``): the scaling signal and, per device, throughput,
batch sizes, the token budget and its out-of-memory history, crashes and restarts."""

from __future__ import annotations

from dataclasses import dataclass

from embedding.budget import BudgetController


@dataclass(frozen=True)
class DeviceStats:
    key: str
    state: str
    precision: str | None
    batches: int
    chunks: int
    tokens: int
    padded_tokens: int
    busy_s: float
    tokens_per_s: float
    mean_batch_chunks: float
    max_batch_chunks: int
    last_batch_chunks: int
    last_batch_padded_tokens: int
    budget_tokens: int | None
    budget_ceiling: int | None
    ooms: int
    shrinks: int
    regrows: int
    crashes: int
    restarts: int
    error: str | None


@dataclass(frozen=True)
class PoolStats:
    queued_chunks: int
    queued_tokens: int
    queued_interactive: int
    queued_bulk: int
    in_flight_batches: int
    in_flight_chunks: int
    pending_requests: int
    duplicates: int
    devices: list[DeviceStats]

    @property
    def load(self) -> int:
        """The scaling signal: chunks waiting or being embedded."""
        return self.queued_chunks + self.in_flight_chunks


@dataclass
class Counters:
    """One worker's running totals (the pool updates them under its lock)."""

    batches: int = 0
    chunks: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    busy_s: float = 0.0
    max_batch: int = 0
    last_batch: int = 0
    last_padded: int = 0
    ooms: int = 0
    crashes: int = 0
    restarts: int = 0
    crash_streak: int = 0

    def record_batch(self, chunks: int, tokens: int, padded: int, elapsed: float) -> None:
        """A batch done: it also ends a streak of crashes."""
        self.batches += 1
        self.chunks += chunks
        self.tokens += tokens
        self.padded_tokens += padded
        self.busy_s += elapsed
        self.max_batch = max(self.max_batch, chunks)
        self.last_batch, self.last_padded = chunks, padded
        self.crash_streak = 0


def device_stats(
    key: str,
    state: str,
    precision: str | None,
    counters: Counters,
    controller: BudgetController | None,
    error: str | None,
) -> DeviceStats:
    """One device's report; ``controller`` is None until its worker has calibrated."""
    c = counters
    return DeviceStats(
        key=key,
        state=state,
        precision=precision,
        batches=c.batches,
        chunks=c.chunks,
        tokens=c.tokens,
        padded_tokens=c.padded_tokens,
        busy_s=c.busy_s,
        tokens_per_s=c.tokens / c.busy_s if c.busy_s > 0 else 0.0,
        mean_batch_chunks=c.chunks / c.batches if c.batches else 0.0,
        max_batch_chunks=c.max_batch,
        last_batch_chunks=c.last_batch,
        last_batch_padded_tokens=c.last_padded,
        budget_tokens=controller.limit if controller else None,
        budget_ceiling=controller.ceiling if controller else None,
        ooms=c.ooms,
        shrinks=controller.shrinks if controller else 0,
        regrows=controller.regrows if controller else 0,
        crashes=c.crashes,
        restarts=c.restarts,
        error=error,
    )
