"""Model work done once: a chunk whose text a model generation already embedded takes the stored vector.

A vector is a function of the model and of the exact text it was given (the chunk text, already normalised
by the parser: NFKC, controls removed, whitespace collapsed), not of the document, source or tenant the text
came from. So before a batch is embedded, its distinct texts are looked up among the stored chunks of the
same generation, and only the others go to the model. Only the vector crosses from one document to another:
the new rows carry their own id, document, tenant and text (lineage stays per document); the lookup returns
no text, tenant or document, and a tenant's searches still see only its own rows (row-level security).

The chunks table is the cache: an index (migration 8), not a table of its own. So a crashed run leaves no
entry behind (its rows rolled back with it), snapshots carry nothing new (the index is built again on
restore), and deleting a document's rows deletes every vector derived from its text. A small in-process memo
holds vectors of texts this process embedded or found lately, for batches still being written: a file listed
twice under two names in one run is embedded once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from psycopg import sql

from vectorstore.db import Connection
from vectorstore.store import ChunkRow

Embed = Callable[[Sequence[str], Sequence[int]], np.ndarray]
"""The model: unit vectors of texts, in order, given their token counts."""

# The index's expression, on both sides: the planner matches it to ``chunks_text_lookup_idx``; the text
# comparison makes a hash collision cost a heap fetch, never a wrong vector.
STORED_VECTORS = sql.SQL(
    """
    SELECT u.ord, s.embedding
    FROM unnest(%(texts)s::text[]) WITH ORDINALITY AS u (t, ord)
    CROSS JOIN LATERAL (
        SELECT c.embedding FROM chunks c
        WHERE hashtextextended(c.text, c.model_id::bigint) = hashtextextended(u.t, %(model)s::bigint)
          AND c.model_id = %(model)s AND c.text = u.t
        LIMIT 1
    ) s
    """
)


def stored_vectors(conn: Connection, model_id: int, texts: Sequence[str]) -> dict[int, np.ndarray]:
    """Stored vectors of generation ``model_id`` for ``texts``, by position in ``texts`` (absent: none stored).

    Runs as the store's owner (the pipeline), which row-level security does not confine: a vector of any
    tenant's identical text serves. Only committed rows are seen, so a vector always comes from a whole
    document version."""
    if not texts:
        return {}
    rows = conn.execute(STORED_VECTORS, {"texts": list(texts), "model": model_id}).fetchall()
    conn.commit()
    return {int(r["ord"]) - 1: np.asarray(r["embedding"].to_numpy(), dtype=np.float32) for r in rows}


@dataclass
class Vectors:
    """Vectors of a batch's chunks by chunk id; ``copied``: those taken from a stored chunk (or an identical
    chunk of this process) instead of embedded; ``embedded_tokens``: the model's work for the rest."""

    by_id: dict[uuid.UUID, np.ndarray] = field(default_factory=dict)
    copied: set[uuid.UUID] = field(default_factory=set)
    embedded_tokens: int = 0

    def update(self, other: Vectors) -> None:
        """Take ``other``'s vectors over these (a chunk embedded again is no longer copied)."""
        self.by_id.update(other.by_id)
        self.copied.difference_update(other.by_id)
        self.copied.update(other.copied)
        self.embedded_tokens += other.embedded_tokens


class Pending(Protocol):
    """Vectors on their way (the embedding pool's request, a future)."""

    def result(self) -> np.ndarray: ...


@dataclass(frozen=True)
class _Ahead:
    """A text being embedded ahead of the run that will ask for it: row ``index`` of ``vectors``."""

    vectors: Pending
    index: int
    tokens: int


class VectorSource:
    """Vectors for chunk rows of one model: texts embedded ahead for this run, the memo, then the store, then
    the model (each distinct text once).

    ``memo_size`` vectors are kept (384 float32s each for MiniLM: 4096 are ~6 MiB), least recently used first
    out. Not thread-safe: one pipeline's thread uses it."""

    def __init__(self, embed: Embed, memo_size: int = 4096) -> None:
        self._embed = embed
        self._memo_size = memo_size
        self._memo: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
        self._ahead: dict[tuple[int, bytes], _Ahead] = {}

    def expect(self, model_id: int, texts: Sequence[str], token_counts: Sequence[int], vectors: Pending) -> None:
        """``texts`` are being embedded (``vectors``, in order) ahead of the run that will write them
        (``flows.ahead``): that run takes them as its own model work, tokens counted, not as copies. A
        failed embedding is forgotten, and its texts are embedded the usual way."""
        for index, (text, tokens) in enumerate(zip(texts, token_counts, strict=True)):
            self._ahead[self._key(model_id, text)] = _Ahead(vectors, index, tokens)

    def forget_ahead(self) -> int:
        """Drop what no run took (documents another run committed meanwhile); returns how many."""
        dropped = len(self._ahead)
        self._ahead.clear()
        return dropped

    def _take_ahead(self, model_id: int, text: str) -> tuple[np.ndarray, int] | None:
        waiting = self._ahead.pop(self._key(model_id, text), None) if self._ahead else None
        if waiting is None:
            return None
        try:
            return waiting.vectors.result()[waiting.index], waiting.tokens
        except Exception:  # noqa: BLE001 - an embedding that failed ahead is done again, where its error shows
            return None

    def vectors(self, conn: Connection, model_id: int, rows: Sequence[ChunkRow]) -> Vectors:
        """A vector for every row of ``rows``, written by generation ``model_id``'s model."""
        by_text: dict[str, list[ChunkRow]] = {}
        for row in rows:
            by_text.setdefault(row.text, []).append(row)
        found: dict[str, np.ndarray] = {}
        ahead: dict[str, np.ndarray] = {}
        result = Vectors()
        for text in by_text:
            taken = self._take_ahead(model_id, text)
            if taken is not None:
                ahead[text] = taken[0]
                result.embedded_tokens += taken[1]
                continue
            remembered = self._recall(model_id, text)
            if remembered is not None:
                found[text] = remembered
        asked = [text for text in by_text if text not in found and text not in ahead]
        for position, vector in stored_vectors(conn, model_id, asked).items():
            found[asked[position]] = vector
        todo = [text for text in by_text if text not in found and text not in ahead]
        embedded_now: list[np.ndarray] = []
        if todo:
            counts = [by_text[text][0].token_count for text in todo]
            embedded_now = list(self._embed(todo, counts))
            result.embedded_tokens += sum(counts)
        for text, vector in [*ahead.items(), *zip(todo, embedded_now, strict=True)]:
            first = by_text[text][0]
            result.by_id[first.id] = vector
            self._remember(model_id, text, vector)
        for text, same in by_text.items():
            if text in found:
                vector, copies = found[text], same
                self._remember(model_id, text, vector)
            else:  # embedded above for its first row; its twins in this batch copy it
                vector, copies = result.by_id[same[0].id], same[1:]
            for row in copies:
                result.by_id[row.id] = vector
                result.copied.add(row.id)
        return result

    def _key(self, model_id: int, text: str) -> tuple[int, bytes]:
        return model_id, hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def _recall(self, model_id: int, text: str) -> np.ndarray | None:
        key = self._key(model_id, text)
        vector = self._memo.get(key)
        if vector is not None:
            self._memo.move_to_end(key)
        return vector

    def _remember(self, model_id: int, text: str, vector: np.ndarray) -> None:
        if self._memo_size <= 0:
            return
        key = self._key(model_id, text)
        self._memo[key] = vector
        self._memo.move_to_end(key)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
