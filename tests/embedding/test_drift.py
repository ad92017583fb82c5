"""The pure drift statistics: profiles, the two-sample KS test (against scipy's), the centroid shift with its
sampling noise taken off, and the verdicts on identical, shifted and small samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats  # type: ignore[import-untyped]  # the oracle (installed with sentence-transformers)

from embedding import drift

DIM = 32


def _cloud(rng: np.random.Generator, n: int, center: np.ndarray, spread: float) -> np.ndarray:
    """``n`` unit vectors scattered around ``center``."""
    rows = center + spread * rng.normal(size=(n, DIM))
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def _axis(i: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    return v


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0]),
        ([128.0] * 8 + [40.0, 60.0], [128.0] * 3 + [20.0] * 7),  # ties, as token lengths have
        (list(np.linspace(0, 1, 50)), list(np.linspace(0.3, 1.3, 70))),
    ],
)
def test_ks_statistic_matches_scipy(a: list[float], b: list[float]) -> None:
    expected = scipy_stats.ks_2samp(a, b).statistic
    assert drift.ks_statistic(np.sort(a), np.sort(b)) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "m"), [(30, 30), (40, 500), (200, 5000), (1000, 1000)])
@pytest.mark.parametrize("d", [0.05, 0.1, 0.2, 0.3])
def test_ks_pvalue_close_to_scipy_asymptotic(n: int, m: int, d: float) -> None:
    expected = scipy_stats.kstwo.sf(d, round(n * m / (n + m)))
    got = drift.ks_pvalue(d, n, m)
    assert abs(got - expected) < 0.03 + 0.1 * expected


def test_profile_keeps_sorted_cosines_to_its_centroid_and_tokens() -> None:
    rng = np.random.default_rng(1)
    vectors = _cloud(rng, 200, _axis(0), 0.3)
    p = drift.profile(vectors * 3.0, [128] * 150 + [40] * 50)  # any length: normalised first
    assert p.count == 200
    assert np.all(np.diff(p.cosines) >= 0) and np.all(np.diff(p.tokens) >= 0)
    assert float(np.linalg.norm(p.centroid)) == pytest.approx(1.0)
    assert p.cosines == pytest.approx(np.sort(vectors @ p.centroid))
    assert p.spread == pytest.approx(math.sqrt(float(np.sum(vectors.var(axis=0)))))


@pytest.mark.parametrize(
    ("case", "n", "center", "tokens", "expected"),
    [
        ("the same distribution, another sample", 300, _axis(0), 128, "ok"),
        ("the same distribution, a small run", 25, _axis(0), 128, "ok"),
        ("another topic", 300, _axis(1), 128, "alert"),
        ("another topic, a small run", 30, _axis(1), 128, "alert"),
        ("too few chunks to judge, however far", 10, _axis(1), 128, "insufficient"),
        ("one chunk", 1, _axis(1), 128, "insufficient"),
    ],
)
def test_compare_verdicts(case: str, n: int, center: np.ndarray, tokens: int, expected: str) -> None:
    rng = np.random.default_rng(7)
    base = drift.profile(_cloud(rng, 1000, _axis(0), 0.25), [128] * 1000)
    result = drift.compare(base, _cloud(rng, n, center, 0.25), [tokens] * n, drift.DriftRules())
    assert result.status == expected, (case, result.to_json())
    if expected == "insufficient":
        assert result.score is None and not result.alert and result.components == {}
    elif expected == "ok":
        assert result.score is not None and result.score < 0.3
    else:
        assert result.score is not None and result.score > 1.0


def test_identical_sample_scores_zero() -> None:
    rng = np.random.default_rng(3)
    vectors = _cloud(rng, 400, _axis(2), 0.3)
    tokens = list(rng.integers(20, 129, size=400))
    result = drift.compare(drift.profile(vectors, tokens), vectors, tokens, drift.DriftRules())
    assert result.status == "ok"
    assert result.score == pytest.approx(0.0, abs=1e-9)
    assert result.components["centroid_cosine"] == pytest.approx(1.0)
    assert result.components["cosine_ks_pvalue"] == pytest.approx(1.0)


def test_centroid_shift_takes_sampling_noise_off() -> None:
    """A small sample's mean wanders from the baseline's by chance; that much is not drift."""
    rng = np.random.default_rng(5)
    base = drift.profile(_cloud(rng, 2000, _axis(0), 0.3), [128] * 2000)
    shifts = [drift.centroid_shift(base, _cloud(rng, 20, _axis(0), 0.3).mean(axis=0), 20) for _ in range(50)]
    raw = [
        float(np.linalg.norm(_cloud(rng, 20, _axis(0), 0.3).mean(axis=0) - base.mean)) / base.spread for _ in range(50)
    ]
    assert float(np.median(shifts)) < 0.1 < float(np.median(raw))


def test_token_lengths_alone_move_the_score_but_need_the_cosine_test_to_alert() -> None:
    rng = np.random.default_rng(11)
    vectors = _cloud(rng, 600, _axis(0), 0.25)
    base = drift.profile(vectors[:300], [128] * 300)
    result = drift.compare(base, vectors[300:], [12] * 300, drift.DriftRules())
    assert result.components["token_ks"] == pytest.approx(1.0)
    assert result.status == "ok"  # the vectors did not move: no alarm on lengths alone at the default weights


@pytest.mark.parametrize(
    ("vectors", "tokens", "why"),
    [(np.zeros((0, 4)), [], "at least one vector"), (np.ones((3, 4)), [1, 2], "3 vectors but 2 token lengths")],
)
def test_profile_refuses_bad_input(vectors: np.ndarray, tokens: list[int], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        drift.profile(vectors, tokens)
