"""Retrieval quality gates of a lossy backend (int8), measured against float32 vectors of the same texts.

Cosine alone says little about retrieval: a precision can keep every vector within 0.99 of its float32 twin
and still reorder the neighbours that search returns. So the gates look at what search does: known-item
recall@5 (a span of words taken from a text must bring that text back in the top 5) must stay within 0.01 of
float32's, the top-10 neighbours of each query must overlap float32's by at least 0.90, and the mean cosine
to float32 must be at least 0.99. Everything here is pure numpy on unit vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RECALL_K = 5
NEIGHBOURS = 10
SPAN_WORDS = 10
"""Words per known-item query: long enough to identify its text, short enough that the search is not trivial
(18-word spans of the example PDFs were found at ~0.99 by float32 and told nothing apart)."""
MIN_WORDS = 2 * SPAN_WORDS
SPANS = 3
"""Queries per text: 272 chunks of the example PDFs give 816, where one query is 0.0012 of recall (with one
query per chunk the 0.01 gate was about three queries, within the noise of a run)."""


@dataclass(frozen=True)
class KnownItem:
    """A query cut from text ``source``; ``targets`` are every text that contains it (overlapping chunks)."""

    query: str
    source: int
    targets: frozenset[int]


def known_items(
    texts: Sequence[str], words: int = SPAN_WORDS, min_words: int = MIN_WORDS, spans: int = SPANS
) -> list[KnownItem]:
    """``spans`` known-item queries per text of at least ``min_words`` words: runs of ``words`` words
    spread evenly inside it (one: the middle; the start of a chunk repeats the overlap of the one before).
    Needs no labels, so any corpus serves; more spans make the recall figure steadier on a small corpus."""
    flat = [" ".join(text.split()) for text in texts]
    items = []
    for i, text in enumerate(flat):
        tokens = text.split(" ")
        if len(tokens) < min_words:
            continue
        for n in range(1, spans + 1):
            start = max(0, len(tokens) * n // (spans + 1) - words // 2)
            query = " ".join(tokens[start : start + words])
            items.append(KnownItem(query, i, frozenset(j for j, other in enumerate(flat) if query in other)))
    return items


def top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest docs per query row, best first (ties by index, so runs agree)."""
    k = min(k, len(docs))
    return np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]


def recall_at_k(queries: np.ndarray, docs: np.ndarray, items: Sequence[KnownItem], k: int = RECALL_K) -> float:
    """Share of known-item queries (rows of ``queries``, in the order of ``items``) with a target in the top k."""
    if not items:
        return 1.0
    hits = [bool(item.targets & set(row.tolist())) for item, row in zip(items, top_k(queries, docs, k), strict=True)]
    return float(np.mean(hits))


def neighbour_overlap(ref_q: np.ndarray, ref_d: np.ndarray, cand_q: np.ndarray, cand_d: np.ndarray) -> float:
    """Mean share of the top-10 docs of each query that the candidate vectors and the reference agree on."""
    if len(ref_q) == 0 or len(ref_d) == 0:
        return 1.0
    ref, cand = top_k(ref_q, ref_d, NEIGHBOURS), top_k(cand_q, cand_d, NEIGHBOURS)
    k = ref.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ref, cand, strict=True)]))


@dataclass(frozen=True)
class GateFigures:
    """What the gates look at; ``reference_recall`` is float32's recall@5 on the same queries."""

    mean_cosine: float
    min_cosine: float
    neighbour_overlap: float
    recall: float
    reference_recall: float

    @property
    def recall_delta(self) -> float:
        return self.recall - self.reference_recall


def measure(
    ref_queries: np.ndarray,
    ref_docs: np.ndarray,
    queries: np.ndarray,
    docs: np.ndarray,
    items: Sequence[KnownItem],
    n_known: int,
) -> GateFigures:
    """Gate figures of candidate vectors against float32 ones. Query rows: the last ``n_known`` are the
    known-item queries of ``items``; all of them count for neighbour overlap. Cosines cover every row."""
    cosines = np.concatenate([np.sum(ref_queries * queries, axis=1), np.sum(ref_docs * docs, axis=1)])
    known = slice(len(queries) - n_known, len(queries))
    return GateFigures(
        mean_cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        neighbour_overlap=neighbour_overlap(ref_queries, ref_docs, queries, docs),
        recall=recall_at_k(queries[known], docs, items),
        reference_recall=recall_at_k(ref_queries[known], ref_docs, items),
    )


@dataclass(frozen=True)
class Gates:
    """The issue's bars for int8 (W2 3/5)."""

    max_recall_drop: float = 0.01
    min_neighbour_overlap: float = 0.90
    min_mean_cosine: float = 0.99


def failures(figures: GateFigures, gates: Gates) -> list[str]:
    """Why ``figures`` fail ``gates`` (empty: they pass). A candidate may do better than float32 on recall."""
    found = []
    if figures.recall_delta < -gates.max_recall_drop - 1e-9:
        found.append(
            f"recall@{RECALL_K} {figures.recall:.3f} vs float32 {figures.reference_recall:.3f} "
            f"(drop > {gates.max_recall_drop})"
        )
    if figures.neighbour_overlap < gates.min_neighbour_overlap:
        found.append(f"top-{NEIGHBOURS} overlap {figures.neighbour_overlap:.3f} < {gates.min_neighbour_overlap}")
    if figures.mean_cosine < gates.min_mean_cosine:
        found.append(f"mean cosine {figures.mean_cosine:.4f} < {gates.min_mean_cosine}")
    return found
