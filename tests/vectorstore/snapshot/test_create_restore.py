"""Snapshots of a real store, restored into fresh databases and compared row by row, vector by vector and
query by query."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from embedding.model import Embedder, ModelIdentity
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import load_settings
from tests.support.db import fresh_database
from tests.support.embedders import CountingEmbedder
from tests.vectorstore.snapshot.support import (
    CUSTOM_INDEX,
    QUERIES,
    SUBJECTS,
    Origin,
    counts,
    damaged,
    exact_top,
    hnsw_indexes,
    index_top,
    replace_table,
    rows,
    serving,
    vector_checksum,
)
from vectorstore import ledger
from vectorstore.db import Connection, DatabaseError, connect
from vectorstore.indexing import full_text_index_missing
from vectorstore.migrations import MIGRATIONS, migrate
from vectorstore.snapshot import (
    MANIFEST,
    TABLES,
    SnapshotError,
    create_snapshot,
    restore_snapshot,
    snapshot_name,
    verify_snapshot,
)

# -- create -------------------------------------------------------------------------------------------------


def test_manifest_describes_the_store(origin: Origin, embedder: Embedder) -> None:
    conn = origin.services.conn
    manifest = json.loads((origin.snapshot / MANIFEST).read_text())
    assert manifest["format"] == "ragline-snapshot" and manifest["format_version"] == 2
    assert manifest["schema_version"] == max(v for v, _, _ in MIGRATIONS)
    assert manifest["vector_dim"] == 384
    assert manifest["postgres_version"] and manifest["pgvector_version"]
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert manifest["hnsw"] == {"m": 16, "ef_construction": 64}
    (model,) = manifest["models"]
    me = embedder.identity
    assert (model["name"], model["revision"], model["dim"], model["normalized"], model["state"]) == (
        me.name,
        me.revision,
        me.dim,
        me.normalized,
        "active",
    )
    assert model["chunks"] == counts(conn)["chunks"] > 150
    assert manifest["indexes"] == [{"model_id": model["id"], "type": "vector", "m": 16, "ef_construction": 64}]
    assert serving(conn).id == model["id"]
    assert sorted(manifest["tables"]) == sorted(counts(conn))
    for table, entry in manifest["tables"].items():
        data = (origin.snapshot / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == counts(conn)[table]
    assert "tsv" not in [c["name"] for c in manifest["tables"]["chunks"]["columns"]]  # generated: not stored
    assert "index_loads" not in manifest["tables"] and "store_stats" not in manifest["tables"]


def test_chunks_are_streamed_in_row_groups_with_fixed_size_float32_vectors(origin: Origin) -> None:
    parquet = pq.ParquetFile(origin.snapshot / "chunks.parquet")
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert len(sizes) > 2 and max(sizes) <= 50
    assert parquet.schema_arrow.field("embedding").type == pa.list_(pa.float32(), 384)
    assert parquet.schema_arrow.field("id").type == pa.uuid()
    table = parquet.read(columns=["id", "embedding"])
    first = table.column("id")[0].as_py()
    stored = np.array(table.column("embedding")[0].as_py(), dtype=np.float32)
    conn = origin.services.conn
    vector = rows(conn, f"SELECT embedding::text AS v FROM chunks WHERE id = '{first}'")[0]["v"]
    assert np.array_equal(stored, np.array(json.loads(vector), dtype=np.float32))


def test_a_destination_holding_a_snapshot_is_refused(origin: Origin) -> None:
    with pytest.raises(SnapshotError, match="already holds a snapshot"):
        create_snapshot(origin.services.conn, str(origin.snapshot))


class _WriteHookFS(MemoryFileSystem):  # type: ignore[misc]  # fsspec has no type information
    """Memory filesystem that runs ``hook`` when the chunks file is opened for writing: by then sources,
    models and documents have been read, and the chunks not yet."""

    protocol = "ragline-hooked"
    hook: Any = None

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if mode.startswith("w") and path.endswith("chunks.parquet") and _WriteHookFS.hook is not None:
            _WriteHookFS.hook()
        return super()._open(path, mode, *args, **kwargs)


def test_snapshot_is_one_consistent_view_while_writers_commit(origin: Origin, pg_server: str) -> None:
    """A document deleted (chunks cascading) by another connection in the middle of the snapshot: the snapshot
    holds the document and all its chunks, as they were when it started."""
    url = fresh_database(pg_server)
    conn = connect(url)
    restore_snapshot(conn, str(origin.snapshot))
    victim = rows(conn, "SELECT document_id AS id, count(*) AS n FROM chunks GROUP BY 1 ORDER BY 1 LIMIT 1")[0]
    before = counts(conn)

    def concurrent_delete() -> None:
        with connect(url) as other:
            other.execute("DELETE FROM documents WHERE id = %s", (victim["id"],))
            other.commit()

    fsspec.register_implementation(_WriteHookFS.protocol, _WriteHookFS, clobber=True)
    _WriteHookFS.hook = concurrent_delete
    dest = f"{_WriteHookFS.protocol}://consistency/{uuid.uuid4().hex}"
    try:
        manifest = create_snapshot(conn, dest)
    finally:
        _WriteHookFS.hook = None
    assert counts(conn)["chunks"] == before["chunks"] - victim["n"]  # the delete did commit meanwhile
    assert {t: manifest.rows(t) for t in TABLES} == before
    conn.close()


# -- restore ------------------------------------------------------------------------------------------------


def test_restore_into_a_fresh_database_is_identical(origin: Origin, target: Connection, embedder: Embedder) -> None:
    src = origin.services.conn
    restored = restore_snapshot(target, str(origin.snapshot), model=embedder.identity)
    assert restored.rows("chunks") == origin.manifest.rows("chunks")

    assert counts(target) == counts(src)
    assert vector_checksum(target) == vector_checksum(src)
    for query in [
        "SELECT * FROM sources ORDER BY id",
        "SELECT * FROM models ORDER BY id",
        "SELECT * FROM documents ORDER BY id",
        "SELECT id, document_id, chunk_index, page, text, token_count, model_id, metadata, created_at, tsv::text"
        " FROM chunks ORDER BY id",
    ]:
        assert rows(target, query) == rows(src, query), query
    statuses = {r["status"] for r in rows(target, "SELECT status FROM documents")}
    assert statuses == {"committed", "quarantined", "deleted"}
    cursor = rows(target, "SELECT cursor FROM sources WHERE name = 'wiki'")[0]["cursor"]
    assert cursor == {"continue": "-||", "since": "2024-05-01T00:00:00Z", "page": 42}

    generation = serving(target)
    assert generation == serving(src) and hnsw_indexes(target) == hnsw_indexes(src)
    assert not full_text_index_missing(target)  # dropped for the load, built after it
    vectors = embedder.embed(QUERIES)
    assert len(QUERIES) >= 20
    overlap = []
    for vector in vectors:
        exact = exact_top(target, vector, generation.id)
        assert exact == exact_top(src, vector, generation.id)
        overlap.append(len(set(index_top(target, vector, generation)) & set(exact)) / len(exact))
    assert sum(overlap) / len(overlap) >= 0.98

    # Ids were kept and sequences moved past them: new rows get fresh ids.
    top_source = max(r["id"] for r in rows(target, "SELECT id FROM sources"))
    assert ledger.ensure_source(target, "new", "pdf") == top_source + 1


def test_restored_store_resumes_without_model_work(
    origin: Origin, pg_server: str, embedder: Embedder, tmp_path: Path
) -> None:
    url = fresh_database(pg_server)
    conn = connect(url)
    restore_snapshot(conn, str(origin.snapshot))
    conn.close()
    counting = CountingEmbedder(embedder)
    svc = Services(load_settings({"RAGLINE_HOME": str(tmp_path), "RAGLINE_DATABASE_URL": url}), counting)
    try:
        docs = origin.snapshot.parent / "docs"
        again = ingest_pdf_paths(svc.pipeline, [str(docs)])
        assert counting.calls == []
        assert again.committed == 0 and again.unchanged == len(SUBJECTS) - 1
    finally:
        svc.close()


def test_restore_into_a_non_empty_database_is_refused(origin: Origin) -> None:
    before = counts(origin.services.conn)
    with pytest.raises(SnapshotError, match=r"not empty \(sources: 2 rows, models: 1 rows, documents: \d+ rows"):
        restore_snapshot(origin.services.conn, str(origin.snapshot), force=True)
    assert counts(origin.services.conn) == before


def test_model_mismatch_is_refused_unless_forced(origin: Origin, target: Connection, embedder: Embedder) -> None:
    other = ModelIdentity(name="acme/other-model", revision="v2", dim=384, normalized=True)
    with pytest.raises(SnapshotError, match=r"search is served by .*all-MiniLM-L6-v2.*configured model is acme/other"):
        restore_snapshot(target, str(origin.snapshot), model=other)
    assert rows(target, "SELECT to_regclass('chunks') IS NULL AS untouched")[0]["untouched"]
    restore_snapshot(target, str(origin.snapshot), model=other, force=True)
    assert counts(target) == counts(origin.services.conn)


def test_round_trip_through_an_fsspec_url(origin: Origin, target: Connection) -> None:
    dest = f"memory://ragline-tests/{uuid.uuid4().hex}/{snapshot_name(datetime.now(UTC))}"
    create_snapshot(origin.services.conn, dest)
    assert verify_snapshot(dest).rows("chunks") == origin.manifest.rows("chunks")
    with pytest.raises(SnapshotError, match="already holds a snapshot"):
        create_snapshot(origin.services.conn, dest)
    restore_snapshot(target, dest)
    assert vector_checksum(target) == vector_checksum(origin.services.conn)


def test_a_load_that_fails_midway_restores_nothing(origin: Origin, target: Connection, tmp_path: Path) -> None:
    """A snapshot that verifies but cannot load (a document its chunks need is gone): no row is left behind."""
    snap = damaged(origin, tmp_path)
    documents = pq.read_table(snap / "documents.parquet")
    needed = pq.read_table(snap / "chunks.parquet", columns=["document_id"]).column("document_id")[0]
    replace_table(snap, "documents", documents.filter(pc.not_equal(documents.column("id"), needed)))
    verify_snapshot(str(snap))
    migrate(target, 384)
    target.execute(CUSTOM_INDEX)
    target.commit()
    with pytest.raises(DatabaseError, match=r"nothing was restored: .*foreign key"):
        restore_snapshot(target, str(snap))
    assert counts(target) == dict.fromkeys(TABLES, 0)
    assert list(hnsw_indexes(target)) == ["chunks_custom_l2"]  # its drop for the load was rolled back too
    assert not full_text_index_missing(target)
