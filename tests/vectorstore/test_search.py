"""Search (rank fusion, hybrid ranking, the fallback without the full-text column) against the real embedded
Postgres + pgvector."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from embedding.model import Embedder
from vectorstore import generations, ledger, migrations, store
from vectorstore.db import Connection
from vectorstore.ids import chunk_id
from vectorstore.ledger import DocumentVersion
from vectorstore.search import fuse, search
from vectorstore.settings import SearchSettings
from vectorstore.store import ChunkRow

U = [uuid.UUID(int=i) for i in range(10)]


@pytest.mark.parametrize(
    ("rankings", "expected"),
    [
        ([[U[1], U[2], U[3]]], [U[1], U[2], U[3]]),
        ([[U[1], U[2]], [U[2], U[1]]], [U[1], U[2]]),  # tie broken deterministically
        ([[U[1], U[2], U[3]], [U[3], U[4]]], [U[3], U[1], U[2], U[4]]),  # in both rankings beats first in one
        ([[], [U[5]]], [U[5]]),
    ],
)
def test_fuse(rankings: list[list[uuid.UUID]], expected: list[uuid.UUID]) -> None:
    assert [c for c, _ in fuse(rankings, 10)] == expected


def _commit(conn: Connection, embedder: Embedder, source_id: int, name: str, text: str) -> None:
    """Commit document ``name`` as one chunk holding ``text``."""
    row = ChunkRow(chunk_id("s", name, 0, text, "m"), 0, 1, text, 10)
    doc = DocumentVersion(external_id=name, uri=name, title=name, content_hash="h-" + name, fingerprint="f")
    model_id = generations.register(conn, embedder.identity).id
    store.commit_document(conn, source_id, doc, [row], {row.id: embedder.embed([text])[0]}, model_id)


def test_the_full_text_column_can_be_dropped_and_added_back(conn: Connection, embedder: Embedder) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    _commit(conn, embedder, source_id, "ops", "Error E1234: the flux capacitor overheated during the warp test.")
    _commit(conn, embedder, source_id, "cats", "Cats sleep for most of the day and hunt at dusk.")
    query = "flux capacitor overheated during the warp"
    vector = embedder.embed([query])[0]

    def indexes() -> set[str]:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'chunks'").fetchall()
        conn.commit()
        return {r["indexname"] for r in rows}

    assert migrations.full_text_present(conn) and "chunks_tsv_gin" in indexes()
    assert migrations.set_full_text(conn, False) is True
    assert not migrations.full_text_present(conn) and "chunks_tsv_gin" not in indexes()
    assert migrations.set_full_text(conn, False) is False  # already off
    # Without the column, hybrid requests rank by vector: scores are cosine similarities, nothing is lost.
    hits = search(conn, vector, 3, text=query)
    assert [h.uri for h in hits] == ["ops", "cats"]
    assert hits[0].score == pytest.approx(hits[0].similarity)
    assert hits[0].score < 1.0
    _commit(conn, embedder, source_id, "dogs", "Dogs bark at the postman.")  # writes go on without it

    assert migrations.set_full_text(conn, True) is True
    assert "chunks_tsv_gin" in indexes()
    missing = conn.execute("SELECT count(*) AS n FROM chunks WHERE tsv IS NULL").fetchone()
    assert missing == {"n": 0}  # computed for the chunks written while it was off
    hits = search(conn, vector, 3, text=query)
    assert hits[0].uri == "ops" and hits[0].score > 1.0  # the phrase ranking is back


def test_hybrid_search_puts_exact_phrases_first(conn: Connection, embedder: Embedder) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    other = ledger.ensure_source(conn, "t", "pdf")
    _commit(conn, embedder, source_id, "cars", "The gearbox of the vintage roadster grinds in third gear.")
    _commit(conn, embedder, source_id, "ops", "Error E1234: the flux capacitor overheated during the warp test.")
    _commit(conn, embedder, other, "cats", "Cats sleep for most of the day and hunt at dusk.")
    query = "flux capacitor overheated during the warp"
    vector = embedder.embed([query])[0]

    hybrid = search(conn, vector, 3, text=query)
    assert hybrid[0].uri == "ops" and hybrid[0].score > 1.0
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    vector_only = search(conn, vector, 3, text=query, settings=SearchSettings(mode="vector"))
    assert vector_only[0].score == pytest.approx(vector_only[0].similarity)
    assert len(vector_only) == 3

    only_t = search(conn, vector, 3, text=query, source="t")
    assert [h.uri for h in only_t] == ["cats"]
    assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
