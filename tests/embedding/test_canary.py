"""The canary's texts and comparison: per text, the worst one named; the real model reproduces its own vectors."""

from __future__ import annotations

import numpy as np
import pytest

from embedding import canary
from embedding.model import Embedder, EmbeddingSettings


def _unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


STORED = _unit(np.random.default_rng(0).normal(size=(len(canary.CANARY_TEXTS), 24)))
TOLERANCE = canary.Tolerance()
ROTATION = np.linalg.qr(np.random.default_rng(1).normal(size=(24, 24)))[0]


def _at(cosines: list[float]) -> np.ndarray:
    """Fresh vectors at exactly these cosines to ``STORED`` (each turned towards a direction orthogonal to it)."""
    rng = np.random.default_rng(3)
    fresh = []
    for stored, cos in zip(STORED, cosines, strict=True):
        other = rng.normal(size=stored.shape)
        other -= (other @ stored) * stored
        other /= np.linalg.norm(other)
        fresh.append(cos * stored + np.sqrt(1 - cos * cos) * other)
    return np.array(fresh)


N = len(canary.CANARY_TEXTS)


@pytest.mark.parametrize(
    ("case", "fresh", "ok", "worst"),
    [
        ("the same vectors", STORED, True, None),
        ("int8 against float32, as measured: one text at 0.978", _at([0.978] + [0.995] * (N - 1)), True, None),
        ("one kind of text broken, the mean still fine", _at([1.0] * 3 + [0.90] + [1.0] * (N - 4)), False, 3),
        ("a small loss on every text: the mean", _at([0.985] * N), False, None),
        ("rotated: other weights", STORED @ ROTATION, False, None),
        ("another dimension", STORED[:, :12], False, 0),
    ],
)
def test_compare(case: str, fresh: np.ndarray, ok: bool, worst: int | None) -> None:
    result = canary.compare(STORED, fresh, TOLERANCE)
    assert result.ok is ok, (case, result)
    if worst is not None:
        assert result.worst_text == canary.CANARY_TEXTS[worst]
    assert ("matches" if ok else "MISMATCH") in result.describe()


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
    assert canary.compare(stored, embedder.embed(texts), TOLERANCE).min_cosine > 0.9999
    bf16 = Embedder(EmbeddingSettings(precision="bfloat16")).embed(texts)
    result = canary.compare(stored, bf16, TOLERANCE)
    assert result.ok and result.min_cosine > 0.99, result.describe()
