"""Embedding drift: what a sample of a source's chunk vectors looks like (a ``Profile``) and how far a run's
vectors have moved from it (``compare``). Pure numpy, no I/O: the baseline's storage is
``vectorstore.baselines``, the run's sample and the alarm are ``flows.drift``.

A run is compared with its source's baseline three ways, each an effect size (how much, not how sure):
- **centroid shift**: the distance between the run's mean vector and the baseline's, in units of the
  baseline's spread (the root of its total variance), with the distance two samples of that spread would show
  by chance taken off (a 20-chunk run's mean wanders ~1/sqrt(20) of the spread on its own);
- **cosine KS**: the two-sample Kolmogorov-Smirnov statistic between the cosines to the baseline's centroid
  of the baseline's sample and of the run's: text of another kind sits at other distances from it;
- **token KS**: the same statistic on chunk token lengths (a source that turned into one-line records).
The score is their weighted sum; an alert needs the score over the threshold *and* the cosine test to be
significant (its p-value under ``alpha``), so a small run that is merely noisy never raises one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

DriftStatus = Literal["ok", "alert", "insufficient"]


@dataclass(frozen=True)
class Profile:
    """Statistics of a sample of chunk vectors (a baseline, or a run's). ``cosines`` are to this profile's
    own centroid and ``tokens`` the chunks' token lengths, both sorted: enough for two-sample tests."""

    count: int
    mean: np.ndarray
    variance: np.ndarray
    cosines: np.ndarray
    tokens: np.ndarray

    @property
    def centroid(self) -> np.ndarray:
        """The unit direction of the mean vector (what cosine to the centroid is measured against)."""
        return unit(self.mean)

    @property
    def spread(self) -> float:
        """Root of the total variance: the typical distance of a vector from the mean."""
        return float(math.sqrt(float(np.sum(self.variance))))


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return np.asarray(vector / norm) if norm > 0 else vector


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12))


def profile(vectors: np.ndarray, tokens: Sequence[int] | np.ndarray) -> Profile:
    """The profile of ``vectors`` (one row per chunk, normalised here) and their chunks' token lengths."""
    if len(vectors) == 0:
        raise ValueError("a profile needs at least one vector")
    if len(tokens) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(tokens)} token lengths")
    rows = _unit_rows(np.asarray(vectors, dtype=np.float64))
    mean = rows.mean(axis=0)
    return Profile(
        count=len(rows),
        mean=mean,
        variance=rows.var(axis=0),
        cosines=np.sort(rows @ unit(mean)),
        tokens=np.sort(np.asarray(tokens, dtype=np.float64)),
    )


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of sorted samples: the largest gap between their empirical
    distribution functions, evaluated at every observed value (exact with ties, as token lengths have)."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("the KS statistic needs two non-empty samples")
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_pvalue(statistic: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic (the Kolmogorov distribution with Stephens' small-sample
    correction, as in Numerical Recipes' ``probks``): within a few percent from ~20 observations per sample."""
    effective = n * m / (n + m)
    root = math.sqrt(effective)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return float(min(1.0, max(0.0, total)))


@dataclass(frozen=True)
class DriftRules:
    """How a score is made and judged (``flows.settings.DriftSettings`` holds the configured values)."""

    min_chunks: int = 20
    threshold: float = 0.5
    alpha: float = 0.001
    centroid_weight: float = 1.0
    cosine_weight: float = 1.0
    token_weight: float = 0.25


@dataclass(frozen=True)
class Drift:
    """A run's drift against its baseline: ``insufficient`` (too few chunks: no score, never an alert)."""

    status: DriftStatus
    score: float | None
    sample: int
    baseline_sample: int
    components: dict[str, float]
    threshold: float

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "score": None if self.score is None else round(self.score, 4),
            "alert": self.alert,
            "threshold": self.threshold,
            "sample": self.sample,
            "baseline_sample": self.baseline_sample,
            "components": {k: round(v, 6) for k, v in self.components.items()},
        }


def centroid_shift(baseline: Profile, mean: np.ndarray, count: int) -> float:
    """Distance of a sample's mean (of ``count`` unit vectors) from the baseline's, in units of the
    baseline's spread, less what sampling alone gives: the squared distance between the means of two samples
    of one distribution is expected at ``spread^2 (1/n + 1/m)``, so that much is subtracted (floored at 0)."""
    spread2 = float(np.sum(baseline.variance))
    if spread2 <= 0:
        return 0.0
    distance2 = float(np.sum((mean - baseline.mean) ** 2))
    chance = spread2 * (1.0 / count + 1.0 / baseline.count)
    return math.sqrt(max(0.0, distance2 - chance) / spread2)


def compare(baseline: Profile, vectors: np.ndarray, tokens: Sequence[int] | np.ndarray, rules: DriftRules) -> Drift:
    """Drift of a run's sampled ``vectors`` (and their chunks' token lengths) against ``baseline``."""
    n = len(vectors)
    if n < rules.min_chunks:
        return Drift("insufficient", None, n, baseline.count, {}, rules.threshold)
    rows = _unit_rows(np.asarray(vectors, dtype=np.float64))
    mean = rows.mean(axis=0)
    cosines = np.sort(rows @ baseline.centroid)
    run_tokens = np.sort(np.asarray(tokens, dtype=np.float64))
    shift = centroid_shift(baseline, mean, n)
    cos_d = ks_statistic(baseline.cosines, cosines)
    cos_p = ks_pvalue(cos_d, baseline.count, n)
    tok_d = ks_statistic(baseline.tokens, run_tokens)
    score = rules.centroid_weight * shift + rules.cosine_weight * cos_d + rules.token_weight * tok_d
    components = {
        "centroid_shift": shift,
        "centroid_cosine": float(np.dot(unit(mean), baseline.centroid)),
        "cosine_ks": cos_d,
        "cosine_ks_pvalue": cos_p,
        "token_ks": tok_d,
        "mean_cosine_to_centroid": float(np.mean(cosines)),
        "baseline_mean_cosine_to_centroid": float(np.mean(baseline.cosines)),
        "median_tokens": float(np.median(run_tokens)),
        "baseline_median_tokens": float(np.median(baseline.tokens)),
    }
    alert = score > rules.threshold and cos_p < rules.alpha
    return Drift("alert" if alert else "ok", score, n, baseline.count, components, rules.threshold)
