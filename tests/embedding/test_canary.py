"""The canary's texts and comparison: per text, the worst one named; the real model reproduces its own vectors."""

from __future__ import annotations

import numpy as np
import pytest

from embedding import canary
from embedding.model import Embedder, EmbeddingSettings


def _unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


STORED = _unit(np.random.default_rng(0).normal(size=(len(canary.CANARY_TEXTS), 24)))
ROTATION = np.linalg.qr(np.random.default_rng(1).normal(size=(24, 24)))[0]


def _one_text_off(index: int, weight: float) -> np.ndarray:
    fresh = STORED.copy()
    fresh[index] = _unit((STORED[index] + weight * STORED[(index + 1) % len(STORED)])[None, :])[0]
    return fresh


@pytest.mark.parametrize(
    ("case", "fresh", "ok", "worst"),
    [
        ("the same vectors", STORED, True, None),
        (
            "numerics noise (bf16-like)",
            _unit(STORED + 1e-3 * np.random.default_rng(2).normal(size=STORED.shape)),
            True,
            None,
        ),
        ("rotated: other weights", STORED @ ROTATION, False, None),
        ("one kind of text broken", _one_text_off(2, 0.8), False, canary.CANARY_TEXTS[2]),
        ("another dimension", STORED[:, :12], False, canary.CANARY_TEXTS[0]),
    ],
)
def test_compare(case: str, fresh: np.ndarray, ok: bool, worst: str | None) -> None:
    result = canary.compare(STORED, fresh, 0.98)
    assert result.ok is ok, (case, result)
    if worst is not None:
        assert result.worst_text == worst
    assert ("matches" if ok else "MISMATCH") in result.describe()


def test_tolerance_is_per_text() -> None:
    """One text at 0.95 among fifteen perfect ones: the mean is fine, the canary is not."""
    fresh = _one_text_off(5, 0.33)
    result = canary.compare(STORED, fresh, 0.98)
    assert result.mean_cosine > 0.99 and result.min_cosine < 0.98 and not result.ok
    assert result.worst_text == canary.CANARY_TEXTS[5]


def test_texts_are_varied_and_their_digest_names_the_set() -> None:
    texts = canary.CANARY_TEXTS
    assert len(texts) == 16 and len(set(texts)) == 16
    assert any("def " in t for t in texts) and any("SELECT" in t for t in texts)
    assert any(not t.isascii() for t in texts)  # other scripts and accents
    assert canary.texts_digest() == canary.texts_digest(list(texts))
    assert canary.texts_digest(texts[:-1]) != canary.texts_digest()


def test_the_real_model_reproduces_its_vectors_and_other_precisions_pass(embedder: Embedder) -> None:
    texts = list(canary.CANARY_TEXTS)
    stored = embedder.embed(texts)
    assert canary.compare(stored, embedder.embed(texts), 0.98).min_cosine > 0.9999
    bf16 = Embedder(EmbeddingSettings(precision="bfloat16")).embed(texts)
    result = canary.compare(stored, bf16, 0.98)
    assert result.ok and result.min_cosine > 0.99, result.describe()
