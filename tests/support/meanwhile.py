"""A seam in time for pipeline tests: another writer acting between a batch's embedding and its commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tests.support.embedders import CountingEmbedder


class ConcurrentWriterEmbedder(CountingEmbedder):
    """Runs ``meanwhile`` once, on its first call: another writer acting between a batch's embedding and its
    commit (a seam in time, not a fake: the writer uses its own real connection)."""

    def __init__(self, inner: CountingEmbedder, meanwhile: Callable[[], None]) -> None:
        super().__init__(inner)
        self.meanwhile: Callable[[], None] | None = meanwhile

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        vectors = super().embed(texts, token_counts=token_counts)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return vectors
