"""Token budgets, pure: how much memory a batch takes, how chunks are packed into batches, and the AIMD state
that shrinks a device's budget on out-of-memory and grows it back after a streak of successes.

A batch of ``n`` chunks padded to ``L`` tokens costs ``n * L`` padded tokens. Its activation memory is
modelled as ``fixed + n*L*per_token + n*L*L*per_token_position``: the second term is everything that grows with
the tokens (hidden states, feed-forward), the third the attention scores, one ``L x L`` matrix per head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Budget = Callable[[int], int]
"""Padded tokens a batch may have, given its padded length."""


@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: float
    per_token: float
    per_token_position: float
    source: str

    def bytes_for(self, items: int, length: int) -> float:
        tokens = items * length
        return self.fixed_bytes + tokens * self.per_token + tokens * length * self.per_token_position

    def max_padded_tokens(self, usable_bytes: float, length: int) -> int:
        per_token = self.per_token + self.per_token_position * length
        if per_token <= 0:
            return 1 << 40
        return max(0, int((usable_bytes - self.fixed_bytes) / per_token))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MemoryModel:
        return cls(
            fixed_bytes=float(data["fixed_bytes"]),
            per_token=float(data["per_token"]),
            per_token_position=float(data["per_token_position"]),
            source=str(data["source"]),
        )


def fit_memory_model(samples: Sequence[tuple[int, int, float]], source: str) -> MemoryModel:
    """Least-squares fit of the memory model to measured ``(items, length, peak bytes)``; a coefficient that
    comes out negative (noise) is pinned to zero and the others refitted, so the model never promises memory
    back for longer batches."""
    if len(samples) < 3:
        raise ValueError(f"need at least 3 (items, length, bytes) samples to fit memory per token, got {len(samples)}")
    rows = np.array([[1.0, n * length, n * length * length] for n, length, _ in samples])
    peaks = np.array([float(b) for _, _, b in samples])
    active = [0, 1, 2]
    coef = np.zeros(3)
    while active:
        solution, *_ = np.linalg.lstsq(rows[:, active], peaks, rcond=None)
        if (solution >= 0).all():
            coef[:] = 0
            coef[active] = solution
            break
        active = [a for a, s in zip(active, solution, strict=True) if s >= 0]
    return MemoryModel(
        fixed_bytes=float(coef[0]), per_token=float(coef[1]), per_token_position=float(coef[2]), source=source
    )


def analytic_memory_model(config: Mapping[str, Any], dtype_bytes: int) -> MemoryModel:
    """Upper bound of the live activations of one encoder layer in inference (``inference_mode`` frees each
    layer's intermediates before the next), from a BERT-style ``config.json``: per token the layer input,
    Q, K, V, the attention context, its projection and the residual sum, the layer output, the pooled token
    embeddings (9 x hidden) plus the feed-forward expansion and its activation (2 x intermediate) in the
    compute dtype, and 3 int64 inputs; per token and position two ``heads x L`` score matrices (scores and
    softmax). Where a model differs, the pool's OOM backoff corrects what this misses."""
    hidden = int(config.get("hidden_size") or config.get("d_model") or config.get("dim") or 768)
    intermediate = int(config.get("intermediate_size") or config.get("d_ff") or config.get("hidden_dim") or 4 * hidden)
    heads = int(config.get("num_attention_heads") or config.get("n_heads") or config.get("num_heads") or 12)
    per_token = dtype_bytes * (9 * hidden + 2 * intermediate) + 3 * 8
    return MemoryModel(
        fixed_bytes=0.0,
        per_token=float(per_token),
        per_token_position=float(2 * heads * dtype_bytes),
        source=f"analytic (hidden {hidden}, intermediate {intermediate}, heads {heads}, {dtype_bytes}-byte dtype)",
    )


def checked_memory_model(analytic: MemoryModel, measured: Sequence[tuple[int, int, float]]) -> MemoryModel:
    """The analytic model, scaled up where a measurement exceeded it (never down: the CPU measurement is a
    lower bound, see ``devices.measure_cpu_peak``)."""
    ratios = [peak / analytic.bytes_for(n, length) for n, length, peak in measured if analytic.bytes_for(n, length)]
    worst = max(ratios, default=0.0)
    scale = max(1.0, worst)
    return MemoryModel(
        fixed_bytes=analytic.fixed_bytes * scale,
        per_token=analytic.per_token * scale,
        per_token_position=analytic.per_token_position * scale,
        source=f"{analytic.source}; measured peak/estimate {worst:.2f} over {len(measured)} batch(es)"
        + (f", scaled x{scale:.2f}" if scale > 1 else ""),
    )


def take_batch(lengths: Iterable[int], budget: Budget, max_items: int) -> int:
    """How many of ``lengths`` (in queue order) the next batch takes: the longest prefix whose padded size
    (count x longest) stays within ``budget(longest)``; always at least one, so a chunk longer than any
    budget is still tried alone (and an out-of-memory there is reported, not looped on)."""
    longest = 0
    count = 0
    for length in lengths:
        padded = max(longest, length)
        if count and ((count + 1) * padded > budget(padded) or count >= max_items):
            break
        longest, count = padded, count + 1
    return count


def pack(lengths: Sequence[int], budget: Budget, max_items: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches, longest first, each within the budget: sorting first keeps padding
    small (sentence-transformers' ``encode`` does the same), and longest first meets an out-of-memory early."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        n = take_batch([lengths[i] for i in order[start:]], budget, max_items)
        batches.append(order[start : start + n])
        start += n
    return batches


class BudgetController:
    """A device's padded-token limit, AIMD-style like TCP congestion control: halve below the batch that ran
    out of memory, grow by ``factor`` after ``regrow_after`` successes in a row, never above ``ceiling``
    (what memory and the configured cap allow). There is no floor above one token: a batch that fails keeps
    being split until single chunks remain, whose failures the pool counts against the chunk."""

    def __init__(self, ceiling: int, regrow_after: int, factor: float) -> None:
        if regrow_after < 1 or factor <= 1:
            raise ValueError(f"regrow_after={regrow_after}, factor={factor}: need regrow_after >= 1, factor > 1")
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.regrow_after = regrow_after
        self.factor = factor
        self.streak = 0
        self.shrinks = 0
        self.regrows = 0

    def on_oom(self, padded_tokens: int) -> int:
        """The new limit after a batch of ``padded_tokens`` ran out of memory: below that batch, so that
        it is re-packed into smaller ones."""
        self.streak = 0
        self.shrinks += 1
        self.limit = max(1, min(self.limit, padded_tokens) // 2)
        return self.limit

    def on_success(self) -> bool:
        """Count a success; True when the limit grew (the caller may then re-probe memory)."""
        self.streak += 1
        if self.limit >= self.ceiling or self.streak < self.regrow_after:
            return False
        self.streak = 0
        self.regrows += 1
        self.limit = min(self.ceiling, max(self.limit + 1, math.ceil(self.limit * self.factor)))
        return True

    def set_ceiling(self, ceiling: int) -> None:
        """Memory freed or taken by others moves the ceiling; a limit above a lowered ceiling follows it,
        and a raised ceiling is reached by regrowing."""
        self.ceiling = max(1, ceiling)
        self.limit = min(self.limit, self.ceiling)

    @property
    def shrunk(self) -> bool:
        return self.limit < self.ceiling
