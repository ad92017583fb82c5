"""The model canary: fixed texts whose vectors, stored when a model generation is first used, are compared
with what the model of each later process start makes of them. Same name and revision, other vectors: other
weights under the same name, another library version, other numerics. Pure (texts and the comparison); the
stored vectors live in ``vectorstore.baselines`` and the check runs in ``flows.canary``.

The tolerance looks at the worst text and at the mean: a different model shows on most texts, a broken
numeric path (a tokenizer change, a kernel bug) may show on one kind of text only (code, digits, another
script), and a small loss everywhere shows in the mean.

Legitimate numerics stay close, but not equally on every text: against float32 vectors, bfloat16 gave
0.9999 on every canary text here, int8 (OpenVINO, NNCF) a mean of 0.995 and 0.978 on its worst text (the
one-character "q"; all the others 0.988 or more). int8 is used only within ``embedding.gates`` (mean cosine
>= 0.99 over a corpus), so the default tolerance asks the same mean, 0.99, and 0.95 of every text. What it
does not catch: weights perturbed by 2% of their spread still gave 0.996 on the worst text (a model that
embeds the same, for search's purposes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CANARY_TEXTS: tuple[str, ...] = (
    "The committee approved the budget after a long debate about road maintenance in the northern districts.",
    "To reset the router, hold the button on the back for ten seconds until the light blinks amber.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "SELECT customer_id, sum(amount) FROM orders WHERE created_at >= '2024-01-01' GROUP BY customer_id;",
    "Invoice 48213: 3 x 12.50 EUR, VAT 19 %, total 44.63 EUR, due 2025-03-31.",
    "3.14159 2.71828 1.41421 1.73205 0.57721 1.61803",
    "Der Zug nach Hamburg fährt heute wegen Bauarbeiten zwanzig Minuten später ab.",
    "Les résultats de l'enquête seront publiés la semaine prochaine sur le site de la mairie.",
    "El paciente presenta fiebre leve y tos seca desde hace tres días.",
    "東京の天気は明日晴れる予報です。",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "ERROR 2024-11-02T13:45:10Z worker-7 connection refused: retrying in 5 s (attempt 3 of 10)",
    "Preheat the oven to 200 degrees, then bake the bread for thirty-five minutes until golden.",
    "Section 4.2(b): the lessee shall return the premises in the condition received, fair wear excepted.",
    "lol that game last night was wild, cant believe they won in overtime!!",
    "q",
)
"""Sixteen short texts of different kinds (prose, instructions, code, SQL, numbers, four other languages, a
log line, legal text, chat, one character): one forward pass, tens of milliseconds on a loaded model."""


def texts_digest(texts: Sequence[str] = CANARY_TEXTS) -> str:
    """Identifies the set of texts: stored vectors of another set are not compared (they are replaced)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Tolerance:
    """How close fresh canary vectors must stay to the stored ones: every text at ``min_cosine`` or more (one
    broken kind of text shows), and their mean at ``min_mean`` or more (a small loss on every text shows)."""

    min_cosine: float = 0.95
    min_mean: float = 0.99

    def __str__(self) -> str:
        return f"worst >= {self.min_cosine}, mean >= {self.min_mean}"


@dataclass(frozen=True)
class CanaryResult:
    """The comparison of fresh canary vectors with the stored ones: ``ok`` when within ``tolerance``."""

    ok: bool
    min_cosine: float
    mean_cosine: float
    worst_text: str
    tolerance: Tolerance

    def describe(self) -> str:
        worst = self.worst_text if len(self.worst_text) <= 40 else self.worst_text[:37] + "..."
        verdict = "matches" if self.ok else "MISMATCH"
        return (
            f"canary {verdict}: worst text {worst!r} at cosine {self.min_cosine:.4f}, "
            f"mean {self.mean_cosine:.4f} (tolerance: {self.tolerance})"
        )


def compare(
    stored: np.ndarray, fresh: np.ndarray, tolerance: Tolerance, texts: Sequence[str] = CANARY_TEXTS
) -> CanaryResult:
    """Per-text cosine of ``fresh`` to ``stored`` vectors (rows in the order of ``texts``)."""
    if stored.shape != fresh.shape:
        # Another dimension is another model: as far from a match as it gets.
        return CanaryResult(False, -1.0, -1.0, texts[0], tolerance)
    a = stored / np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
    b = fresh / np.maximum(np.linalg.norm(fresh, axis=1, keepdims=True), 1e-12)
    cosines = np.sum(a * b, axis=1)
    worst = int(np.argmin(cosines))
    mean = float(np.mean(cosines))
    return CanaryResult(
        ok=bool(cosines[worst] >= tolerance.min_cosine and mean >= tolerance.min_mean),
        min_cosine=float(cosines[worst]),
        mean_cosine=mean,
        worst_text=texts[worst],
        tolerance=tolerance,
    )
