"""Which precision a device runs: the fastest that keeps quality against float32, measured on a calibration
set rather than assumed (bfloat16 was 2-3.4x faster than float32 on a CPU with AMX, 0.71-0.84x on one
without; docs/benchmarks.md), and cached so that start-up does not pay for it each run.

Quality bars: the cosine of every vector to its float32 twin, and the overlap of the top-10 neighbours of a
query set among the calibration texts. ``int8``, a lossy backend, is held to retrieval gates instead
(``gates``: known-item recall@5 within 0.01 of float32, top-10 overlap >= 0.90, mean cosine >= 0.99), since
no int8 model keeps every vector within 0.999. The decision (``choose``) is pure; ``calibrate`` times the
candidates through an injected runner factory, round-robin, so machine noise hits all of them alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedding import gates
from embedding.devices import Device
from embedding.gates import GateFigures, Gates, KnownItem
from embedding.model import cpu_has_native_bf16
from embedding.pool_settings import Precision

log = logging.getLogger(__name__)

NEIGHBOURS = 10


class Encoder(Protocol):
    """What calibration needs of a loaded model: unit float32 vectors for a batch, in order."""

    def forward(self, texts: Sequence[str]) -> np.ndarray: ...


def candidates(
    device: Device, *, cuda_bf16: bool = False, cpu_bf16: bool | None = None, int8: bool = False
) -> list[Precision]:
    """Precisions worth trying on ``device``. float16 on CPU is left out (slow kernels); ``int8`` (OpenVINO,
    CPU only) where its extra is installed (``int8``)."""
    if device.kind == "cpu":
        # Without AMX tiles bf16 ran slower than float32 here (0.71-0.91x, docs/benchmarks.md): not worth the
        # calibration time at every first start.
        native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
        found: list[Precision] = ["float32", "bfloat16", "autocast-bfloat16"] if native else ["float32"]
        return [*found, "int8"] if int8 else found
    gpu: list[Precision] = ["float32", "float16", "autocast-float16"]
    if cuda_bf16:
        gpu += ["bfloat16", "autocast-bfloat16"]
    return gpu


@dataclass(frozen=True)
class Measurement:
    precision: str
    tokens_per_s: float
    min_cosine: float
    neighbour_overlap: float
    error: str | None = None
    mean_cosine: float | None = None
    recall: float | None = None
    reference_recall: float | None = None
    """Known-item recall@5 of this precision and of float32 (None where no known items were measured)."""

    def gate_figures(self) -> GateFigures | None:
        if self.mean_cosine is None or self.recall is None or self.reference_recall is None:
            return None
        return GateFigures(
            self.mean_cosine, self.min_cosine, self.neighbour_overlap, self.recall, self.reference_recall
        )


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float = 0.999
    min_neighbour_overlap: float = 0.95
    min_speedup: float = 1.1
    int8: Gates = field(default_factory=Gates)
    """The bars of ``int8`` instead of the two above."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str
    measurements: list[Measurement] = field(default_factory=list)
    cached: bool = False

    def summary(self) -> str:
        ref = next((m.tokens_per_s for m in self.measurements if m.precision == "float32"), 0.0)
        parts = [
            f"{m.precision} {m.tokens_per_s:.0f} tok/s"
            + (f" ({m.tokens_per_s / ref:.2f}x)" if ref else "")
            + (f" cos>={m.min_cosine:.5f} top{NEIGHBOURS}={m.neighbour_overlap:.3f}" if m.error is None else "")
            + (
                f" mean cos={m.mean_cosine:.4f} recall@{gates.RECALL_K}={m.recall:.3f}"
                f" (float32 {m.reference_recall:.3f})"
                if m.precision == "int8" and m.error is None and m.gate_figures() is not None
                else ""
            )
            + (f" failed: {m.error}" if m.error else "")
            for m in self.measurements
        ]
        return f"{self.precision}: {self.reason}" + (f" [{'; '.join(parts)}]" if parts else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "reason": self.reason,
            "measurements": [asdict(m) for m in self.measurements],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, cached: bool = False) -> PrecisionChoice:
        return cls(
            precision=str(data["precision"]),
            reason=str(data["reason"]),
            measurements=[Measurement(**m) for m in data["measurements"]],
            cached=cached,
        )


def quality(reference: np.ndarray, candidate: np.ndarray, n_queries: int, k: int = NEIGHBOURS) -> tuple[float, float]:
    """(minimum cosine over all vectors, mean top-k neighbour overlap of the first ``n_queries`` rows as
    queries against the remaining rows as documents). Rows are unit vectors."""
    if reference.shape != candidate.shape:
        raise ValueError(f"vectors differ in shape: {reference.shape} vs {candidate.shape}")
    cosine = float(np.min(np.sum(reference * candidate, axis=1)))
    docs_ref, docs_cand = reference[n_queries:], candidate[n_queries:]
    k = min(k, len(docs_ref))
    if n_queries == 0 or k == 0:
        return cosine, 1.0
    top_ref = np.argsort(-(reference[:n_queries] @ docs_ref.T), axis=1, kind="stable")[:, :k]
    top_cand = np.argsort(-(candidate[:n_queries] @ docs_cand.T), axis=1, kind="stable")[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand, strict=True)]))
    return cosine, overlap


def choose(measurements: Sequence[Measurement], thresholds: Thresholds) -> PrecisionChoice:
    """The fastest precision that meets both quality bars and beats float32 by ``min_speedup``; float32
    otherwise. Pure: tested with made-up measurements."""
    by_name = {m.precision: m for m in measurements}
    ref = by_name.get("float32")
    if ref is None or ref.error is not None:
        raise ValueError("calibration has no float32 reference measurement")
    passing = []
    rejected = []
    for m in measurements:
        if m.precision == "float32":
            continue
        if m.error is not None:
            rejected.append(f"{m.precision} failed ({m.error})")
        elif m.precision == "int8":
            figures = m.gate_figures()
            failed = ["not measured on known items"] if figures is None else gates.failures(figures, thresholds.int8)
            if failed:
                rejected.append(f"int8 {', '.join(failed)}")
            elif m.tokens_per_s < ref.tokens_per_s * thresholds.min_speedup:
                rejected.append(f"int8 {m.tokens_per_s / ref.tokens_per_s:.2f}x < {thresholds.min_speedup}x")
            else:
                passing.append(m)
        elif m.min_cosine < thresholds.min_cosine:
            rejected.append(f"{m.precision} cosine {m.min_cosine:.5f} < {thresholds.min_cosine}")
        elif m.neighbour_overlap < thresholds.min_neighbour_overlap:
            overlap, floor = m.neighbour_overlap, thresholds.min_neighbour_overlap
            rejected.append(f"{m.precision} top-{NEIGHBOURS} overlap {overlap:.3f} < {floor}")
        elif m.tokens_per_s < ref.tokens_per_s * thresholds.min_speedup:
            rejected.append(f"{m.precision} {m.tokens_per_s / ref.tokens_per_s:.2f}x < {thresholds.min_speedup}x")
        else:
            passing.append(m)
    if passing:
        best = max(passing, key=lambda m: m.tokens_per_s)
        reason = f"{best.tokens_per_s / ref.tokens_per_s:.2f}x float32 within the quality bars"
        return PrecisionChoice(best.precision, reason, list(measurements))
    reason = "no other precision was within the quality bars and faster" if rejected else "only float32 was tried"
    if rejected:
        reason += ": " + "; ".join(rejected)
    return PrecisionChoice("float32", reason, list(measurements))


def calibrate(
    make: Callable[[str], Encoder],
    names: Sequence[str],
    texts: Sequence[str],
    batches: Sequence[Sequence[int]],
    tokens: int,
    n_queries: int,
    *,
    rounds: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    known: Sequence[KnownItem] = (),
) -> list[Measurement]:
    """Measure ``names`` (float32 first: the reference) on ``texts`` (the first ``n_queries`` are the
    queries, the last ``len(known)`` of them the known-item queries of ``known``, whose targets index the
    texts after the queries), run in ``batches`` of indices as the pool would pack them. Every candidate is
    loaded and run once (the warm-up, whose vectors are compared with float32's), then timed: each batch
    ``rounds`` times per candidate, interleaved, keeping the fastest. A candidate that fails to load or run
    is recorded with its error, never chosen."""
    if not names or names[0] != "float32":
        raise ValueError(f"calibration must start with float32 as the reference, got {list(names)}")
    loaded: dict[str, Encoder] = {}
    errors: dict[str, str] = {}
    vectors: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        try:
            encoder = make(name)
            vectors[name] = _run_in_order(encoder, texts, batches)
            loaded[name] = encoder
        except Exception as err:
            if name == "float32":
                raise
            errors[name] = f"{type(err).__name__}: {err}"
            log.warning("precision %s cannot run here: %s", name, errors[name])
    # Interleaved per batch and the fastest round kept per batch: noise on a shared machine only ever adds
    # time, and a burst of it then hits every candidate alike instead of one candidate's whole pass.
    for batch in batches:
        chunk = [texts[i] for i in batch]
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, encoder in loaded.items():
                start = clock()
                encoder.forward(chunk)
                best[name] = min(best.get(name, float("inf")), clock() - start)
        for name, seconds in best.items():
            times[name].append(seconds)
    result = []
    for name in names:
        if name in errors:
            result.append(Measurement(name, 0.0, 0.0, 0.0, errors[name]))
            continue
        cosine, overlap = quality(vectors["float32"], vectors[name], n_queries)
        elapsed = sum(times[name])
        speed = tokens / elapsed if elapsed > 0 else 0.0
        if not known:
            result.append(Measurement(name, speed, cosine, overlap))
            continue
        ref, cand = vectors["float32"], vectors[name]
        figures = gates.measure(ref[:n_queries], ref[n_queries:], cand[:n_queries], cand[n_queries:], known, len(known))
        result.append(
            Measurement(
                name,
                speed,
                cosine,
                overlap,
                mean_cosine=figures.mean_cosine,
                recall=figures.recall,
                reference_recall=figures.reference_recall,
            )
        )
    return result


def _run_in_order(encoder: Encoder, texts: Sequence[str], batches: Sequence[Sequence[int]]) -> np.ndarray:
    rows: list[np.ndarray | None] = [None] * len(texts)
    for batch in batches:
        for i, vector in zip(batch, encoder.forward([texts[i] for i in batch]), strict=True):
            rows[i] = vector
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        raise ValueError(f"calibration batches leave out texts {missing[:5]}")
    return np.stack([row for row in rows if row is not None])


class CalibrationCache:
    """JSON files in a directory the caller owns, one per (kind, key); the key is stored in the file and
    compared on read, and a file that cannot be read is recalibrated, not trusted."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory: dict[str, dict[str, Any]] = {}  # what this process measured, also without a directory

    @staticmethod
    def _digest(key: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def path(self, kind: str, key: Mapping[str, Any]) -> Path | None:
        return self.directory / f"{kind}-{self._digest(key)}.json" if self.directory else None

    def get(self, kind: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        known = self._memory.get(f"{kind}-{self._digest(key)}")
        if known is not None:
            return known
        path = self.path(kind, key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable calibration cache %s: %s", path, err)
            return None
        if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key)):
            log.warning("ignoring calibration cache %s: written for another key", path)
            return None
        value = data.get("value")
        return value if isinstance(value, dict) else None

    def put(self, kind: str, key: Mapping[str, Any], value: Mapping[str, Any]) -> None:
        self._memory[f"{kind}-{self._digest(key)}"] = dict(value)
        path = self.path(kind, key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}, indent=2, sort_keys=True))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
