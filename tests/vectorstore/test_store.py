"""The store against the real embedded Postgres + pgvector."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embedding.model import Embedder
from vectorstore import generations, ledger, store
from vectorstore.db import Connection, DatabaseError, connect
from vectorstore.ids import chunk_id
from vectorstore.ledger import DocumentVersion
from vectorstore.migrations import MIGRATIONS, TEXT_LOOKUP_INDEX, migrate
from vectorstore.search import search
from vectorstore.settings import SearchSettings
from vectorstore.store import ChunkRow


def test_migrations_are_idempotent_and_safe_concurrently(empty_database_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(empty_database_url) as conn:
                migrate(conn, 384)
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with connect(empty_database_url) as conn:
        assert migrate(conn, 384) == []
        versions = [r["version"] for r in conn.execute("SELECT version FROM ragline_migrations ORDER BY 1")]
        assert versions == [v for v, _, _ in MIGRATIONS]


def test_a_v3_store_migrates_to_generations_keeping_its_vectors_and_index(empty_database_url: str) -> None:
    """A store made before generations (typed column, one global index) keeps its rows; its model serves and
    gets its own partial index, used by search."""
    with connect(empty_database_url) as conn:
        with conn.transaction():
            conn.execute(
                "CREATE TABLE ragline_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, apply in MIGRATIONS[:3]:
                apply(conn, 3, 16, 64)
                conn.execute("INSERT INTO ragline_migrations (version, name) VALUES (%s, %s)", (version, name))
            conn.execute("INSERT INTO sources (name, kind) VALUES ('s', 'pdf')")
            conn.execute("INSERT INTO models (name, revision, dim, normalized) VALUES ('m', 'r', 3, true)")
            conn.execute(
                "INSERT INTO documents (source_id, external_id, uri, content_hash, status) "
                "VALUES (1, 'd', 'd', 'h', 'committed')"
            )
            conn.execute(
                "INSERT INTO chunks (id, document_id, chunk_index, text, token_count, model_id, embedding) "
                "VALUES (gen_random_uuid(), 1, 0, 'x', 1, 1, '[1,0,0]')"
            )
        assert migrate(conn, 3) == [version for version, _, _ in MIGRATIONS[3:]]
        gen = conn.execute("SELECT state FROM models WHERE id = 1").fetchone()
        assert gen is not None and gen["state"] == "active"
        indexes = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'chunks'")}
        assert "chunks_hnsw_m1" in indexes and "chunks_embedding_hnsw" not in indexes
        assert TEXT_LOOKUP_INDEX in indexes  # built over the rows already there
        tenant = conn.execute("SELECT tenant FROM chunks").fetchone()
        assert tenant is not None and tenant["tenant"] == "default"
        hits = search(conn, np.array([1.0, 0.0, 0.0], dtype=np.float32), 1, settings=SearchSettings(exact="never"))
        assert [h.text for h in hits] == ["x"]


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="cannot connect"):
        connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)


def _doc(name: str) -> DocumentVersion:
    return DocumentVersion(external_id=name, uri=name, title=name, content_hash="h-" + name, fingerprint="f")


def _commit(conn: Connection, embedder: Embedder, source_id: int, name: str, texts: list[str]) -> None:
    rows = [ChunkRow(chunk_id("s", name, i, t, "m"), i, 1, t, 10) for i, t in enumerate(texts)]
    vectors = dict(zip([r.id for r in rows], embedder.embed(texts), strict=True))
    model_id = generations.register(conn, embedder.identity).id
    store.commit_document(conn, source_id, _doc(name), rows, vectors, model_id)


def test_commit_replaces_chunks_atomically(conn: Connection, embedder: Embedder) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    _commit(conn, embedder, source_id, "a", ["alpha one", "alpha two", "alpha three"])
    _commit(conn, embedder, source_id, "a", ["alpha one", "alpha two changed"])
    texts = [r["text"] for r in conn.execute("SELECT text FROM chunks ORDER BY chunk_index")]
    assert texts == ["alpha one", "alpha two changed"]
    [doc] = conn.execute("SELECT status, chunk_count, committed_hash FROM documents").fetchall()
    assert doc == {"status": "committed", "chunk_count": 2, "committed_hash": "h-a"}

    # a commit that fails half way leaves the previous version whole
    rows = [ChunkRow(chunk_id("s", "a", 0, "new", "m"), 0, 1, "new", 1)]
    with pytest.raises(store.StaleChunksError):
        store.commit_document(conn, source_id, _doc("a"), rows, {}, generations.register(conn, embedder.identity).id)
    texts = [r["text"] for r in conn.execute("SELECT text FROM chunks ORDER BY chunk_index")]
    assert texts == ["alpha one", "alpha two changed"]


def _version(name: str, texts: list[str]) -> store.DocumentCommit:
    rows = [ChunkRow(chunk_id("s", name, i, t, "m"), i, 1, t, 10) for i, t in enumerate(texts)]
    return store.DocumentCommit(_doc(name), rows)


def _texts_by_document(conn: Connection) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT d.external_id, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
        "ORDER BY d.external_id, c.chunk_index"
    ).fetchall()
    conn.commit()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["external_id"], []).append(r["text"])
    return out


def test_group_commit_writes_each_version_whole_and_reports_in_the_callers_order(
    conn: Connection, embedder: Embedder
) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    model_id = generations.register(conn, embedder.identity).id
    batch = [
        _version("zeta", ["zeta one", "zeta two"]),
        _version("alpha", ["alpha one"]),
        _version("mu", ["mu one", "mu two", "mu three"]),
    ]
    texts = [c.text for item in batch for c in item.chunks]
    vectors = dict(zip([c.id for item in batch for c in item.chunks], embedder.embed(texts), strict=True))
    done = store.commit_documents(conn, source_id, batch, vectors, model_id)
    ids = {r["external_id"]: r["id"] for r in conn.execute("SELECT id, external_id FROM documents")}
    assert [(c.document_id, c.written) for c in done] == [(ids["zeta"], 2), (ids["alpha"], 1), (ids["mu"], 3)]
    assert _texts_by_document(conn) == {
        "alpha": ["alpha one"],
        "mu": ["mu one", "mu two", "mu three"],
        "zeta": ["zeta one", "zeta two"],
    }
    counts = {
        r["external_id"]: (r["status"], r["chunk_count"])
        for r in conn.execute("SELECT external_id, status, chunk_count FROM documents")
    }
    assert counts == {"zeta": ("committed", 2), "alpha": ("committed", 1), "mu": ("committed", 3)}

    # New versions: one chunk reused (not written again), one dropped, one new.
    again = [
        _version("mu", ["mu one", "mu four"]),
        _version("zeta", ["zeta one", "zeta two"]),
    ]
    new = [c for c in again[0].chunks if c.text == "mu four"]
    done = store.commit_documents(
        conn, source_id, again, dict(zip([c.id for c in new], embedder.embed(["mu four"]), strict=True)), model_id
    )
    assert [c.written for c in done] == [1, 0]
    assert _texts_by_document(conn)["mu"] == ["mu one", "mu four"]


def test_a_stale_document_rolls_back_its_whole_batch_and_is_named(conn: Connection, embedder: Embedder) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    model_id = generations.register(conn, embedder.identity).id
    first = _version("a", ["alpha one"])
    store.commit_documents(
        conn, source_id, [first], dict(zip([first.chunks[0].id], embedder.embed(["alpha one"]), strict=True)), model_id
    )
    good = _version("b", ["beta one"])
    # "a" claims its chunk "alpha zero" is stored (no vector given), but it is not: the batch must not commit "b"
    stale = _version("a", ["alpha zero"])
    with pytest.raises(store.StaleChunksError) as caught:
        store.commit_documents(
            conn,
            source_id,
            [good, stale],
            dict(zip([good.chunks[0].id], embedder.embed(["beta one"]), strict=True)),
            model_id,
        )
    assert caught.value.external_ids == ["a"]
    assert _texts_by_document(conn) == {"a": ["alpha one"]}
    assert conn.execute("SELECT count(*) AS n FROM documents WHERE external_id = 'b'").fetchone() == {"n": 0}

    with pytest.raises(ValueError, match="twice"):
        store.commit_documents(conn, source_id, [good, good], {}, model_id)


def test_a_typical_chunk_row_is_stored_whole_without_toast(conn: Connection, embedder: Embedder) -> None:
    """A chunk of ~200 words (its vector, text and tsvector ~3.5 KB) stays in its heap page: no compression
    attempt nor TOAST insert per write (migration 5). A row over 8 KB is still moved out."""
    source_id = ledger.ensure_source(conn, "s", "pdf")
    words = [f"{w}{i}" for i, w in enumerate(("lava", "magma", "basalt", "caldera", "pumice") * 40)]
    _commit(conn, embedder, source_id, "typical", [" ".join(words)])
    toast = "SELECT pg_relation_size(reltoastrelid) AS n FROM pg_class WHERE relname = 'chunks'"
    assert conn.execute(toast).fetchone() == {"n": 0}
    assert conn.execute("SELECT pg_column_size(tsv) AS n FROM chunks").fetchone()["n"] > 1000  # type: ignore[index]
    huge = " ".join(f"w{i}x{i * 7919 % 10007}" for i in range(3000))  # ~30 KB: still toasted
    _commit(conn, embedder, source_id, "huge", [huge])
    assert conn.execute(toast).fetchone()["n"] > 0  # type: ignore[index]
