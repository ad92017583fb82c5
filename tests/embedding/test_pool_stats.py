"""The pool's report: counters kept per batch and assembled into a device's stats, and the scaling signal."""

from __future__ import annotations

from embedding.budget import BudgetController
from embedding.pool_stats import Counters, PoolStats, device_stats


def test_a_device_that_has_not_calibrated_reports_zeros_and_no_budget() -> None:
    stats = device_stats("cuda:0", "starting", None, Counters(), None, None)
    assert (stats.key, stats.state, stats.precision, stats.error) == ("cuda:0", "starting", None, None)
    assert (stats.batches, stats.tokens_per_s, stats.mean_batch_chunks) == (0, 0.0, 0.0)
    assert (stats.budget_tokens, stats.budget_ceiling, stats.shrinks, stats.regrows) == (None, None, 0, 0)


def test_batches_add_up_and_end_a_crash_streak() -> None:
    counters = Counters(crashes=2, crash_streak=2)
    counters.record_batch(chunks=10, tokens=900, padded=1000, elapsed=0.5)
    counters.record_batch(chunks=4, tokens=300, padded=400, elapsed=0.25)
    controller = BudgetController(ceiling=2048, regrow_after=2, factor=2)
    controller.on_oom(1000)
    stats = device_stats("cpu", "ready", "bfloat16", counters, controller, "RuntimeError: earlier")
    assert (stats.batches, stats.chunks, stats.tokens, stats.padded_tokens) == (2, 14, 1200, 1400)
    assert (stats.busy_s, stats.tokens_per_s, stats.mean_batch_chunks) == (0.75, 1600.0, 7.0)
    assert (stats.max_batch_chunks, stats.last_batch_chunks, stats.last_batch_padded_tokens) == (10, 4, 400)
    assert (stats.budget_tokens, stats.budget_ceiling, stats.shrinks, stats.regrows) == (500, 2048, 1, 0)
    assert (stats.crashes, counters.crash_streak, stats.error) == (2, 0, "RuntimeError: earlier")


def test_load_is_queued_plus_in_flight() -> None:
    stats = PoolStats(
        queued_chunks=7,
        queued_tokens=700,
        queued_interactive=1,
        queued_bulk=6,
        in_flight_batches=2,
        in_flight_chunks=5,
        pending_requests=3,
        duplicates=0,
        devices=[],
    )
    assert stats.load == 12
