"""Pure token-budget logic: memory models, packing, and the AIMD shrink/regrow state."""

from __future__ import annotations

import pytest

from embedding.budget import (
    BudgetController,
    MemoryModel,
    analytic_memory_model,
    checked_memory_model,
    fit_memory_model,
    pack,
    take_batch,
)


@pytest.mark.parametrize(
    ("lengths", "budget", "max_items", "expected"),
    [
        ([], 100, 10, 0),
        ([50, 50, 50], 100, 10, 2),  # 3 x 50 > 100
        ([50, 50, 50], 150, 10, 3),
        ([50, 50, 50], 150, 2, 2),  # item cap
        ([300, 10, 10], 100, 10, 1),  # longer than the budget: still tried alone
        ([10, 10, 60, 10], 100, 10, 2),  # the 60 would pad all three to 180 > 100
        ([60, 10, 10], 180, 10, 3),  # padded to 60: 3 x 60 = 180
    ],
)
def test_take_batch_counts_padded_tokens(lengths: list[int], budget: int, max_items: int, expected: int) -> None:
    assert take_batch(lengths, lambda _length: budget, max_items) == expected


def test_take_batch_asks_the_budget_at_the_padded_length() -> None:
    asked: list[int] = []

    def budget(length: int) -> int:
        asked.append(length)
        return 1000 if length < 100 else 200

    assert take_batch([120, 120, 50], budget, 10) == 1  # 2 x 120 = 240 > 200
    assert asked == [120]
    assert take_batch([90, 90, 90], budget, 10) == 3


def test_pack_sorts_longest_first_and_keeps_every_index_once() -> None:
    lengths = [10, 200, 30, 200, 5, 120, 64]
    batches = pack(lengths, lambda _length: 400, max_items=3)
    assert [i for b in batches for i in b] == sorted(range(len(lengths)), key=lambda i: -lengths[i])
    assert all(len(b) * max(lengths[i] for i in b) <= 400 for b in batches)
    assert batches[0] == [1, 3]


def test_memory_model_budget_arithmetic() -> None:
    model = MemoryModel(fixed_bytes=1_000_000, per_token=1000, per_token_position=10, source="test")
    assert model.bytes_for(4, 100) == 1_000_000 + 400 * 1000 + 400 * 100 * 10
    # (11 MB - 1 MB) / (1000 + 10 x 100) bytes per padded token
    assert model.max_padded_tokens(11_000_000, 100) == 5000
    assert model.max_padded_tokens(500_000, 100) == 0
    assert MemoryModel.from_json(model.to_json()) == model


def test_fit_recovers_the_coefficients_and_pins_negative_ones() -> None:
    truth = MemoryModel(fixed_bytes=2e6, per_token=3000, per_token_position=24, source="truth")
    shapes = [(4, 32), (16, 32), (4, 128), (16, 128), (4, 256), (32, 256)]
    fitted = fit_memory_model([(n, length, truth.bytes_for(n, length)) for n, length in shapes], "measured")
    assert fitted.fixed_bytes == pytest.approx(2e6, rel=1e-6)
    assert fitted.per_token == pytest.approx(3000, rel=1e-6)
    assert fitted.per_token_position == pytest.approx(24, rel=1e-6)
    # no attention term at all, measured with a small negative offset: pinned at zero, not promised back
    linear = [(n, length, 500.0 * n * length - 1000) for n, length in shapes]
    pinned = fit_memory_model(linear, "measured")
    assert pinned.fixed_bytes >= 0 and pinned.per_token_position >= 0
    with pytest.raises(ValueError, match="at least 3"):
        fit_memory_model(linear[:2], "measured")


def test_analytic_model_from_a_bert_config_and_its_check() -> None:
    config = {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 12}
    model = analytic_memory_model(config, dtype_bytes=4)
    assert model.per_token == 4 * (9 * 384 + 2 * 1536) + 24
    assert model.per_token_position == 2 * 12 * 4
    # a measurement below the estimate keeps it (the CPU measurement is a lower bound) ...
    kept = checked_memory_model(model, [(16, 256, 0.5 * model.bytes_for(16, 256))])
    assert kept.per_token == model.per_token and "0.50" in kept.source
    # ... one above it scales the whole model up
    scaled = checked_memory_model(model, [(16, 256, 2 * model.bytes_for(16, 256))])
    assert scaled.per_token == pytest.approx(2 * model.per_token) and "x2.00" in scaled.source


def test_controller_halves_on_oom_and_regrows_after_a_streak() -> None:
    c = BudgetController(ceiling=8000, regrow_after=3, factor=2)
    assert c.limit == 8000
    assert c.on_oom(6000) == 3000  # half the batch that failed, not half the limit
    assert c.on_oom(3000) == 1500
    assert c.on_oom(300) == 150  # below the failed batch however small, so that it is split
    assert c.on_oom(1) == 1
    assert c.shrinks == 4 and c.shrunk
    assert [c.on_success() for _ in range(3)] == [False, False, True]
    assert c.limit == 2 and c.regrows == 1
    c.on_success()
    c.on_oom(2)  # an OOM breaks the streak
    assert c.limit == 1 and c.streak == 0
    for _ in range(60):
        c.on_success()
    assert c.limit == 8000 and not c.shrunk  # back to the ceiling, never above
    assert c.on_success() is False


def test_controller_follows_a_lower_ceiling_and_regrows_to_a_higher_one_gradually() -> None:
    c = BudgetController(ceiling=8000, regrow_after=1, factor=1.5)
    c.set_ceiling(2000)
    assert c.limit == 2000
    c.set_ceiling(4000)
    assert c.limit == 2000
    c.on_success()
    assert c.limit == 3000
    with pytest.raises(ValueError, match="factor"):
        BudgetController(ceiling=10, regrow_after=1, factor=1.0)
