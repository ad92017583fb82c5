"""Stored vectors found by their text (vectorstore/reuse.py) against the real embedded Postgres + pgvector."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from psycopg import sql

from vectorstore import generations, ledger, store
from vectorstore.db import Connection, connect, register_pgvector
from vectorstore.generations import Generation
from vectorstore.ids import chunk_id
from vectorstore.ledger import DocumentVersion
from vectorstore.migrations import TEXT_LOOKUP_INDEX
from vectorstore.reuse import STORED_VECTORS, VectorSource, stored_vectors
from vectorstore.store import ChunkRow


class Identity:
    def __init__(self, name: str) -> None:
        self.name, self.revision, self.dim, self.normalized = name, "r1", 3, True


def unit(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return np.asarray(v / np.linalg.norm(v), dtype=np.float32)


def rows(document: str, texts: Sequence[str]) -> list[ChunkRow]:
    return [ChunkRow(chunk_id("s", document, i, t, "m"), i, 1, t, 10 + i) for i, t in enumerate(texts)]


def commit(conn: Connection, source_id: int, document: str, texts: Sequence[str], gen: Generation) -> list[ChunkRow]:
    chunks = rows(document, texts)
    vectors = {c.id: unit([1, i + 1, len(c.text)]) for i, c in enumerate(chunks)}
    doc = DocumentVersion(external_id=document, uri=document, title=None, content_hash="h", fingerprint="f")
    store.commit_documents(conn, source_id, [store.DocumentCommit(doc, chunks)], vectors, gen.id)
    return chunks


def stored(conn: Connection, chunk: ChunkRow) -> np.ndarray:
    row = conn.execute("SELECT embedding FROM chunks WHERE id = %s", (chunk.id,)).fetchone()
    conn.commit()
    assert row is not None
    return np.asarray(row["embedding"].to_numpy(), dtype=np.float32)


class Model:
    """The model seam: vectors from the text's length, and every call recorded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str], tokens: Sequence[int]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([unit([2, 1, len(t)]) for t in texts])


def test_a_text_is_found_in_its_own_generation_only_and_by_its_exact_text(conn: Connection) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    old = generations.register(conn, Identity("old"))
    [alpha, beta] = commit(conn, source_id, "a", ["alpha text", "beta text"], old)
    new = generations.register(conn, Identity("new"))

    found = stored_vectors(conn, old.id, ["beta text", "nothing like it", "alpha text", "Alpha text", "alpha text "])
    assert sorted(found) == [0, 2]
    assert np.array_equal(found[0], stored(conn, beta)) and np.array_equal(found[2], stored(conn, alpha))
    assert stored_vectors(conn, new.id, ["alpha text", "beta text"]) == {}  # a new generation embeds again
    assert stored_vectors(conn, old.id, []) == {}


def test_the_lookup_goes_through_its_index_and_no_other_query_does(conn: Connection) -> None:
    """The planner matches the index's expression (a lookup must not scan every chunk of a large store), and a
    query of one generation does not take it instead of the generation's own indexes."""
    source_id = ledger.ensure_source(conn, "s", "pdf")
    gen = generations.register(conn, Identity("m"))
    commit(conn, source_id, "a", [f"text {i}" for i in range(50)], gen)
    conn.execute("ANALYZE chunks")
    conn.commit()

    def plan(query: sql.Composable, params: dict[str, object]) -> str:
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")  # a table this small is scanned whatever the index
            found = conn.execute(sql.SQL("EXPLAIN ") + query, params).fetchall()
        return "\n".join(str(next(iter(r.values()))) for r in found)

    assert TEXT_LOOKUP_INDEX in plan(STORED_VECTORS, {"texts": ["text 3"], "model": gen.id})
    assert TEXT_LOOKUP_INDEX not in plan(sql.SQL("SELECT id FROM chunks WHERE model_id = %(m)s"), {"m": gen.id})


def test_vectors_come_from_the_store_then_the_model_each_distinct_text_once(conn: Connection) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    gen = generations.register(conn, Identity("m"))
    [kept] = commit(conn, source_id, "a", ["stored text"], gen)
    model = Model()
    batch = rows("b", ["stored text", "fresh text", "fresh text", "other text"])

    got = VectorSource(model).vectors(conn, gen.id, batch)
    assert model.calls == [["fresh text", "other text"]]  # the twin and the stored text are not embedded
    assert got.embedded_tokens == batch[1].token_count + batch[3].token_count
    assert got.copied == {batch[0].id, batch[2].id}
    assert set(got.by_id) == {r.id for r in batch}
    assert np.array_equal(got.by_id[batch[0].id], stored(conn, kept))
    assert np.array_equal(got.by_id[batch[1].id], got.by_id[batch[2].id])

    # Texts embedded by this process but not committed yet (a batch still being written) come from its memo.
    source = VectorSource(model)
    source.vectors(conn, gen.id, rows("c", ["pending text"]))
    again = source.vectors(conn, gen.id, rows("d", ["pending text"]))
    assert model.calls[-1] == ["pending text"] and len(model.calls) == 2
    assert again.copied == set(again.by_id) and again.embedded_tokens == 0
    # ... but never across generations.
    other = generations.register(conn, Identity("other"))
    source.vectors(conn, other.id, rows("e", ["pending text"]))
    assert len(model.calls) == 3


def test_a_rolled_back_commit_leaves_no_vector_to_find(conn: Connection) -> None:
    """A crashed run's rows roll back with its transaction: nothing found points at a vector that is not stored."""
    source_id = ledger.ensure_source(conn, "s", "pdf")
    gen = generations.register(conn, Identity("m"))

    def crash_before_the_end() -> None:
        with conn.transaction():
            commit(conn, source_id, "a", ["lost text"], gen)
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        crash_before_the_end()
    assert stored_vectors(conn, gen.id, ["lost text"]) == {}


def test_two_writers_commit_the_same_text_at_once(conn: Connection, database_url: str) -> None:
    """Identical text in two documents written by two transactions open at the same time: neither waits for the
    other nor fails (the text is not unique, each document keeps its own rows), and both rows serve lookups."""
    gen = generations.register(conn, Identity("m"))
    first = ledger.ensure_source(conn, "first", "pdf", "acme")
    second = ledger.ensure_source(conn, "second", "pdf", "globex")
    with connect(database_url) as other:
        register_pgvector(other)
        other.execute("SET lock_timeout = '20s'")  # a wait would fail the test instead of hanging it
        other.commit()
        with conn.transaction():
            mine = commit(conn, first, "a", ["shared text", "only in a"], gen)
            theirs = commit(other, second, "b", ["shared text"], gen)  # committed while ours is open
            assert stored_vectors(other, gen.id, ["only in a"]) == {}  # ours is not visible yet
        assert stored_vectors(other, gen.id, ["shared text", "only in a"]).keys() == {0, 1}
    by_document = conn.execute(
        "SELECT d.external_id, c.tenant, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
        "ORDER BY d.external_id, c.chunk_index"
    ).fetchall()
    assert [tuple(r.values()) for r in by_document] == [
        ("a", "acme", "shared text"),
        ("a", "acme", "only in a"),
        ("b", "globex", "shared text"),
    ]
    assert theirs[0].id != mine[0].id


def test_no_vector_outlives_the_rows_it_was_stored_with(conn: Connection) -> None:
    """Deleting a document's chunks deletes what its text could lend: no vector outlives its rows."""
    source_id = ledger.ensure_source(conn, "s", "pdf")
    gen = generations.register(conn, Identity("m"))
    commit(conn, source_id, "a", ["going away"], gen)
    assert stored_vectors(conn, gen.id, ["going away"]).keys() == {0}
    with conn.transaction():
        conn.execute("DELETE FROM chunks")
    assert stored_vectors(conn, gen.id, ["going away"]) == {}


def test_quotes_backslashes_and_non_ascii_text_are_found_byte_for_byte(conn: Connection) -> None:
    """The server hashes both sides (no client/server encoding mismatch) and the text travels as a parameter."""
    source_id = ledger.ensure_source(conn, "s", "pdf")
    gen = generations.register(conn, Identity("m"))
    tricky = ["it's a \\x41 test", "naïve café — ﬁ", "%(texts)s {}"]
    commit(conn, source_id, "a", tricky, gen)
    assert stored_vectors(conn, gen.id, tricky).keys() == {0, 1, 2}
