"""Embedder seams for tests: the real model, observed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedding.model import Embedder


class CountingEmbedder(Embedder):
    """The real embedder, counting the texts it is asked to embed (a seam, not a fake)."""

    def __init__(self, inner: Embedder) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        return super().embed(texts, token_counts=token_counts)
