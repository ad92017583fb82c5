"""Snapshots against the real embedded Postgres and the real model: real PDFs ingested through the pipeline,
snapshotted, restored into fresh databases and compared row by row, vector by vector and query by query."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem
from psycopg import sql

from embedding.model import Embedder, ModelIdentity
from flows.pipeline import ingest_pdf_paths
from flows.runtime import Services, use_services
from flows.settings import load_settings
from ragline.cli import _Context
from ragline.snapshot_cmd import snapshot as snapshot_group
from tests.support.db import fresh_database
from tests.support.embedders import CountingEmbedder
from tests.support.pdfgen import not_a_pdf, text_pdf
from vectorstore import cursors, generations, ledger
from vectorstore.db import Connection, DatabaseError, connect
from vectorstore.generations import Generation
from vectorstore.indexing import IndexOptions, build_index, full_text_index_missing
from vectorstore.migrations import MIGRATIONS, index_name, migrate
from vectorstore.snapshot import (
    MANIFEST,
    TABLES,
    Column,
    IndexSpec,
    Manifest,
    SnapshotEntry,
    SnapshotError,
    create_snapshot,
    expired,
    from_arrow,
    list_snapshots,
    model_mismatch,
    parse_snapshot_name,
    restore_snapshot,
    snapshot_name,
    to_arrow,
    vector_lists_from_binary,
    verify_snapshot,
)

SUBJECTS = {
    "volcano": "basalt magma caldera eruption lava ash pumice crater tephra vent fissure plume",
    "baking": "sourdough starter flour yeast crumb oven croissant butter gluten proofing crust dough",
    "astronomy": "neutron star comet nebula orbit galaxy telescope supernova pulsar quasar redshift",
    "sailing": "mainsail jib tack gybe keel rudder halyard spinnaker mooring regatta windward leeward",
    "chess": "gambit endgame rook bishop castling checkmate opening pawn fianchetto zugzwang tempo",
    "botany": "photosynthesis chlorophyll stomata xylem phloem pollen germination root seedling",
    "medicine": "antibiotic vaccine dosage symptom diagnosis immune pathogen fever clinic therapy",
    "finance": "dividend bond equity interest inflation portfolio liquidity hedge yield ledger",
}
FILLER = ["the", "a", "of", "with", "during", "because", "often", "many", "some", "after", "before", "under"]


def paragraph(rng: random.Random, subject: str, words: int) -> str:
    vocab = SUBJECTS[subject].split()
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(vocab) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.randint(8, 16))]
        out += [sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."]
    return " ".join(out)


def make_corpus(root: Path) -> list[Path]:
    rng = random.Random(7)
    root.mkdir(parents=True, exist_ok=True)
    files = [
        text_pdf(root / f"{subject}.pdf", [paragraph(rng, subject, 260) for _ in range(7)], title=f"On {subject}")
        for subject in SUBJECTS
    ]
    not_a_pdf(root / "broken.pdf")  # quarantined: the ledger keeps its error
    return files


QUERIES = [
    f"{a} {b} {c}"
    for subject, words in SUBJECTS.items()
    for a, b, c in [words.split()[0:3], words.split()[3:6], words.split()[6:9], words.split()[-3:]]
]


@dataclass
class Origin:
    url: str
    services: Services
    snapshot: Path
    manifest: Manifest


@pytest.fixture(scope="module")
def origin(pg_server: str, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """A store with committed, quarantined and deleted documents, two sources with cursors, and its snapshot."""
    home = tmp_path_factory.mktemp("origin")
    url = fresh_database(pg_server)
    svc = Services(load_settings({"RAGLINE_HOME": str(home), "RAGLINE_DATABASE_URL": url}), shared_embedder=embedder)
    files = make_corpus(home / "docs")
    ingest_pdf_paths(svc.pipeline, [str(home / "docs")])
    files[-1].unlink()
    ingest_pdf_paths(svc.pipeline, [str(home / "docs")])  # the removed file's document is marked deleted
    wiki = ledger.ensure_source(svc.conn, "wiki", "mediawiki")
    cursors.save_cursor(svc.conn, wiki, {"continue": "-||", "since": "2024-05-01T00:00:00Z", "page": 42})
    cursors.save_cursor(svc.conn, ledger.ensure_source(svc.conn, "pdf", "pdf"), {"seen": ["a", "b"]})
    manifest = create_snapshot(svc.conn, str(home / "snap"), batch_rows=50)
    yield Origin(url, svc, home / "snap", manifest)
    svc.close()


@pytest.fixture
def target(pg_server: str) -> Iterator[Connection]:
    conn = connect(fresh_database(pg_server))
    yield conn
    conn.close()


def rows(conn: Connection, query: str) -> list[dict[str, Any]]:
    result = conn.execute(query).fetchall()
    conn.commit()
    return result


def counts(conn: Connection) -> dict[str, int]:
    return {t: rows(conn, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}


def vector_checksum(conn: Connection) -> str:
    return str(
        rows(
            conn,
            "SELECT encode(sha256(convert_to(string_agg(id::text || '=' || embedding::text, ';' ORDER BY id),"
            " 'UTF8')), 'hex') AS h FROM chunks",
        )[0]["h"]
    )


def serving(conn: Connection) -> Generation:
    found = generations.active(conn)
    conn.commit()
    assert found is not None
    return found


def exact_top(conn: Connection, vector: np.ndarray, model_id: int, k: int = 10) -> list[uuid.UUID]:
    """The exact nearest chunks of one generation (a sequential scan, no index)."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        found = conn.execute(
            "SELECT id FROM chunks WHERE model_id = %s ORDER BY embedding <=> %s, id LIMIT %s", (model_id, vector, k)
        ).fetchall()
    return [r["id"] for r in found]


def index_top(conn: Connection, vector: np.ndarray, generation: Generation, k: int = 10) -> list[uuid.UUID]:
    """The nearest chunks of one generation through its HNSW index (the plan must use it)."""
    kind = generations.index_type(conn, generation.id)
    conn.commit()  # the SET LOCAL below must end with its own transaction, not outlive it in an outer one
    assert kind is not None, f"{generation.label} has no index"
    cast = sql.SQL("{}({})").format(sql.SQL(kind), sql.Literal(generation.dim))
    query = sql.SQL("SELECT id FROM chunks WHERE model_id = {m} ORDER BY embedding::{c} <=> %s::{c} LIMIT %s").format(
        m=sql.Literal(generation.id), c=cast
    )
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = conn.execute(sql.SQL("EXPLAIN ") + query, (vector, k))
        assert index_name(generation.id) in " ".join(str(r) for r in plan.fetchall())
        found = conn.execute(query, (vector, k)).fetchall()
    return [r["id"] for r in found]


def hnsw_indexes(conn: Connection) -> dict[str, str]:
    """Valid HNSW indexes on chunks, by name, with their definitions."""
    found = rows(
        conn,
        """
        SELECT c.relname AS name, pg_get_indexdef(x.indexrelid) AS def FROM pg_index x
        JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam
        WHERE x.indrelid = 'chunks'::regclass AND am.amname = 'hnsw' AND x.indisvalid
        """,
    )
    return {r["name"]: r["def"] for r in found}


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


# -- damaged snapshots --------------------------------------------------------------------------------------


def damaged(origin: Origin, tmp_path: Path) -> Path:
    copy = tmp_path / "snap"
    shutil.copytree(origin.snapshot, copy)
    return copy


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def edit_manifest(path: Path, change: Any) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def replace_table(snap: Path, table: str, data: pa.Table) -> None:
    """Make ``data`` the snapshot's file of ``table``, with a manifest that agrees (sound files of other data)."""
    path = snap / f"{table}.parquet"
    pq.write_table(data, path)
    raw = path.read_bytes()

    def change(manifest: dict[str, Any]) -> None:
        entry = manifest["tables"][table]
        kept = {c["name"]: c for c in entry["columns"]}
        entry.update(
            rows=data.num_rows,
            bytes=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            columns=[kept[name] for name in data.column_names],
        )

    edit_manifest(snap, change)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: flip_bytes(p / "chunks.parquet"), r"snap/chunks\.parquet is corrupted: its sha256 differs"),
        (lambda p: truncate(p / "documents.parquet"), r"snap/documents\.parquet is truncated: \d+ bytes, the manifest"),
        (lambda p: (p / "sources.parquet").unlink(), r"snap/sources\.parquet is missing"),
        (lambda p: (p / MANIFEST).unlink(), r"snap/manifest\.json is missing: .* not a snapshot, or an incomplete"),
        (lambda p: truncate(p / MANIFEST), r"snap/manifest\.json is not valid JSON"),
        (
            lambda p: edit_manifest(p, lambda m: m.update(format_version=99)),
            r"snapshot format version 99 is not supported",
        ),
        (
            lambda p: edit_manifest(p, lambda m: m["tables"]["chunks"].update(rows=m["tables"]["chunks"]["rows"] + 1)),
            r"snap/chunks\.parquet: row count mismatch: the file holds \d+ rows, the manifest says \d+",
        ),
        (
            lambda p: edit_manifest(p, lambda m: m.update(vector_dim=768)),
            r"snap/chunks\.parquet: vector dimension mismatch",
        ),
    ],
    ids=["flipped-bytes", "truncated", "missing-file", "no-manifest", "bad-manifest", "format", "count", "dim"],
)
def test_damage_is_found_by_verify_and_by_restore(
    origin: Origin, target: Connection, tmp_path: Path, damage: Any, message: str
) -> None:
    snap = damaged(origin, tmp_path)
    damage(snap)
    with pytest.raises(SnapshotError, match=message):
        verify_snapshot(str(snap))
    with pytest.raises(SnapshotError, match=message):
        restore_snapshot(target, str(snap))
    assert rows(target, "SELECT to_regclass('chunks') IS NULL AS untouched")[0]["untouched"]


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


CUSTOM_INDEX = (
    "CREATE INDEX chunks_custom_l2 ON chunks USING hnsw ((embedding::vector(384)) vector_l2_ops) WHERE model_id = 1"
)
"""An operator's own HNSW index on the target (not a generation's): dropped for the load, built again after."""


# -- stores from other schemas and generations ---------------------------------------------------------------

TINY = ModelIdentity(name="acme/tiny-projection", revision="v1", dim=64, normalized=True)
_PROJECTION = np.random.default_rng(11).standard_normal((384, TINY.dim)).astype(np.float32)


def tiny(vectors: np.ndarray) -> np.ndarray:
    """The "tiny model": a fixed random projection of the real vectors to 64 dimensions, normalized, so its
    neighbours are meaningful (and its queries are the projected real query vectors)."""
    projected: np.ndarray = np.atleast_2d(vectors) @ _PROJECTION
    normalized: np.ndarray = projected / np.linalg.norm(projected, axis=1, keepdims=True)
    return normalized.astype(np.float32)


@dataclass
class TwoGenerations:
    conn: Connection
    serving: Generation
    building: Generation
    snapshot: Path


@pytest.fixture(scope="module")
def re_embedding(origin: Origin, pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoGenerations]:
    """The origin store halfway through a re-embed into a 64-dim model: every chunk also has a vector of the
    new generation (state building, its index built in half precision), and the store's snapshot."""
    conn = connect(fresh_database(pg_server))
    restore_snapshot(conn, str(origin.snapshot))
    active = serving(conn)
    building = generations.register(conn, TINY)
    assert building.state == "building"
    old = rows(
        conn,
        f"SELECT id, document_id, chunk_index, page, text, token_count, metadata::text AS meta, tenant, embedding"
        f" FROM chunks WHERE model_id = {active.id} ORDER BY id",
    )
    projected = tiny(np.stack([r["embedding"].to_numpy() for r in old]))
    copy_sql = (
        "COPY chunks (id, document_id, chunk_index, page, text, token_count, metadata, tenant, model_id, embedding)"
        " FROM STDIN (FORMAT BINARY)"
    )
    with conn.transaction(), conn.cursor().copy(copy_sql) as copy:
        copy.set_types(["uuid", "int8", "int4", "int4", "text", "int4", "jsonb", "text", "int4", "vector"])
        for r, vector in zip(old, projected, strict=True):
            fields = (
                r["document_id"],
                r["chunk_index"],
                r["page"],
                r["text"],
                r["token_count"],
                r["meta"],
                r["tenant"],
            )
            copy.write_row((uuid.uuid5(r["id"], TINY.name), *fields, building.id, vector))
    build_index(conn, building, IndexOptions(index_type="halfvec"))
    snap = tmp_path_factory.mktemp("re-embed") / "snap"
    create_snapshot(conn, str(snap), batch_rows=64)
    yield TwoGenerations(conn, active, building, snap)
    conn.close()


def test_a_re_embed_in_progress_restores_with_both_generations(
    re_embedding: TwoGenerations, target: Connection, embedder: Embedder
) -> None:
    """Vectors of two dimensions in one snapshot: variable-length lists, both generations restored with their
    states and their own indexes, even into a database first migrated for another dimension."""
    src, snap = re_embedding.conn, re_embedding.snapshot
    manifest = json.loads((snap / MANIFEST).read_text())
    assert manifest["vector_dim"] is None
    assert {m["id"]: (m["dim"], m["state"]) for m in manifest["models"] if m["chunks"]} == {
        re_embedding.serving.id: (384, "active"),
        re_embedding.building.id: (64, "building"),
    }
    assert sorted(manifest["indexes"], key=lambda i: i["model_id"]) == [
        {"model_id": re_embedding.serving.id, "type": "vector", "m": 16, "ef_construction": 64},
        {"model_id": re_embedding.building.id, "type": "halfvec", "m": 16, "ef_construction": 64},
    ]
    assert pq.ParquetFile(snap / "chunks.parquet").schema_arrow.field("embedding").type == pa.list_(pa.float32())

    migrate(target, 8)  # the column is untyped since schema v4: another dimension is not in the way
    target.execute(CUSTOM_INDEX)
    target.commit()
    restored = restore_snapshot(target, str(snap), model=embedder.identity)
    assert restored.dims == [64, 384]

    assert counts(target) == counts(src)
    assert vector_checksum(target) == vector_checksum(src)
    states = "SELECT id, name, revision, dim, normalized, state, fingerprint FROM models ORDER BY id"
    assert rows(target, states) == rows(src, states)
    assert generations.building(target) == re_embedding.building
    assert hnsw_indexes(target) == {**hnsw_indexes(src), "chunks_custom_l2": hnsw_indexes(target)["chunks_custom_l2"]}
    assert generations.index_type(target, re_embedding.building.id) == "halfvec"
    target.commit()

    queries = embedder.embed(QUERIES)
    for generation, vectors in [(re_embedding.serving, queries), (re_embedding.building, tiny(queries))]:
        overlap = []
        for vector in vectors:
            exact = exact_top(target, vector, generation.id)
            assert exact == exact_top(src, vector, generation.id)
            overlap.append(len(set(index_top(target, vector, generation)) & set(exact)) / len(exact))
        assert sum(overlap) / len(overlap) >= 0.98, generation.label


def test_a_vector_of_the_wrong_dimension_restores_nothing(
    re_embedding: TwoGenerations, target: Connection, tmp_path: Path
) -> None:
    """The untyped column would take a vector of any length: the restore checks each against its model."""
    snap = tmp_path / "snap"
    shutil.copytree(re_embedding.snapshot, snap)
    chunks = pq.read_table(snap / "chunks.parquet")
    vectors = chunks.column("embedding").to_pylist()
    victim = chunks.column("model_id").to_pylist().index(re_embedding.building.id)
    vectors[victim] = vectors[victim][:-1]
    bad = chunks.set_column(
        chunks.schema.get_field_index("embedding"), "embedding", pa.array(vectors, type=pa.list_(pa.float32()))
    )
    replace_table(snap, "chunks", bad)
    verify_snapshot(str(snap))
    victim_id = chunks.column("id")[victim].as_py()
    message = (
        rf"chunks\.parquet: chunk {victim_id} holds a 63-dim vector, but its model {re_embedding.building.id} makes 64"
    )
    with pytest.raises(SnapshotError, match=message):
        restore_snapshot(target, str(snap))
    assert counts(target) == dict.fromkeys(TABLES, 0)

    edit_manifest(snap, lambda m: m.update(vector_dim=64))
    with pytest.raises(SnapshotError, match=r"chunks\.parquet: vector dimension mismatch: column embedding holds list"):
        verify_snapshot(str(snap))


def test_an_empty_store_round_trips(pg_server: str, target: Connection, tmp_path: Path) -> None:
    """No models, no chunks: no dimension to state, nothing to index."""
    conn = connect(fresh_database(pg_server))
    migrate(conn, 384)
    manifest = create_snapshot(conn, str(tmp_path / "snap"))
    conn.close()
    assert (manifest.vector_dim, manifest.dims, manifest.indexes, manifest.hnsw) == (None, [], (), {})
    restore_snapshot(target, str(tmp_path / "snap"), model=TINY)
    assert counts(target) == dict.fromkeys(TABLES, 0) and hnsw_indexes(target) == {}


def before_generations(origin: Origin, tmp_path: Path) -> Path:
    """The origin snapshot as ragline wrote it before model generations and tenants (format 1, schema 3): no
    model states, no tenant columns, no list of indexes."""
    snap = damaged(origin, tmp_path)
    dropped = {"sources": ["tenant"], "models": ["state", "state_changed_at", "fingerprint"]}
    dropped |= {"documents": ["tenant"], "chunks": ["tenant"]}
    for table, columns in dropped.items():
        replace_table(snap, table, pq.read_table(snap / f"{table}.parquet").drop_columns(columns))

    def change(manifest: dict[str, Any]) -> None:
        manifest.update(format_version=1, schema_version=3)
        del manifest["indexes"]
        for model in manifest["models"]:
            del model["state"]

    edit_manifest(snap, change)
    return snap


def test_a_snapshot_from_before_generations_restores_with_its_model_serving(
    origin: Origin, target: Connection, embedder: Embedder, tmp_path: Path
) -> None:
    snap = before_generations(origin, tmp_path)
    other = ModelIdentity(name="acme/other-model", revision="v2", dim=384, normalized=True)
    with pytest.raises(SnapshotError, match=r"search is served by .*all-MiniLM-L6-v2.*configured model is acme/other"):
        restore_snapshot(target, str(snap), model=other)
    restore_snapshot(target, str(snap), model=embedder.identity)

    src = origin.services.conn
    generation = serving(target)
    assert (generation.id, generation.label) == (serving(src).id, serving(src).label)
    assert hnsw_indexes(target) == hnsw_indexes(src)
    assert vector_checksum(target) == vector_checksum(src)
    assert rows(target, "SELECT DISTINCT tenant FROM chunks") == [{"tenant": "default"}]
    overlap = []
    for vector in embedder.embed(QUERIES):
        exact = exact_top(target, vector, generation.id)
        overlap.append(len(set(index_top(target, vector, generation)) & set(exact)) / len(exact))
    assert sum(overlap) / len(overlap) >= 0.98


MINI = {"id": 1, "name": "acme/mini", "revision": "r1", "dim": 384, "normalized": True}
SMALL = {"id": 2, "name": "acme/small", "revision": "r2", "dim": 64, "normalized": True}


def identity(model: dict[str, Any]) -> ModelIdentity:
    return ModelIdentity(name=model["name"], revision=model["revision"], dim=model["dim"], normalized=True)


def manifest_of(*models: dict[str, Any]) -> Manifest:
    return Manifest("", 4, None, models, {}, {}, "", "", "", (IndexSpec(1, "vector", 16, 64),))


@pytest.mark.parametrize(
    ("models", "configured", "refused"),
    [
        ([{**MINI, "state": "active", "chunks": 5}], MINI, False),
        ([{**MINI, "state": "active", "chunks": 5}], SMALL, True),
        ([{**MINI, "state": "active", "chunks": 0}], SMALL, True),  # an empty serving generation still serves
        ([{**MINI, "state": "active", "chunks": 5}, {**SMALL, "state": "building", "chunks": 2}], SMALL, False),
        ([{**MINI, "state": "retired", "chunks": 3}, {**SMALL, "state": "active", "chunks": 5}], MINI, True),
        ([{**MINI, "state": "retired", "chunks": 3}], SMALL, False),  # nothing serves
        ([{**MINI, "chunks": 5}], MINI, False),  # before generations: the model of the chunks
        ([{**MINI, "chunks": 5}], SMALL, True),
        ([{**MINI, "chunks": 0}], SMALL, False),
        ([], SMALL, False),
    ],
    ids=[
        "active",
        "other",
        "empty-active",
        "building-goes-on",
        "retired-leftovers",
        "none-serving",
        "v3-match",
        "v3-other",
        "v3-empty",
        "no-models",
    ],
)
def test_model_mismatch_compares_with_the_serving_generation(
    models: list[dict[str, Any]], configured: dict[str, Any], refused: bool
) -> None:
    why = model_mismatch(manifest_of(*models), identity(configured))
    assert (why is not None) == refused, why


@pytest.mark.parametrize("dims", [[3, 5, 3], [4, None, 2, None], [None], [7, 7], [0, 2]])
def test_vectors_of_any_dimensions_round_trip_through_arrow(dims: list[int | None]) -> None:
    rng = np.random.default_rng(3)
    vectors = [None if d is None else rng.standard_normal(d).astype(np.float32) for d in dims]
    binary = [None if v is None else struct.pack(">HH", len(v), 0) + v.astype(">f4").tobytes() for v in vectors]
    array = vector_lists_from_binary(binary)
    assert array.type == pa.list_(pa.float32())
    assert array.to_pylist() == [None if v is None else v.tolist() for v in vectors]
    for column in [
        Column("embedding", "vector"),
        *([Column("embedding", "vector", dims[0])] if len(set(dims)) == 1 else []),
    ]:
        (stored,) = to_arrow([column], [(b,) for b in binary])
        back = [row[0] for row in from_arrow([column], pa.record_batch([stored], names=["embedding"]))]
        assert [None if v is None else v.tolist() for v in back] == [None if v is None else v.tolist() for v in vectors]


# -- retention ----------------------------------------------------------------------------------------------

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


def entries(*ages_days: float, incomplete: tuple[float, ...] = ()) -> list[SnapshotEntry]:
    made = [SnapshotEntry(snapshot_name(NOW - timedelta(days=a)), NOW - timedelta(days=a), True) for a in ages_days]
    made += [SnapshotEntry(snapshot_name(NOW - timedelta(days=a)), NOW - timedelta(days=a), False) for a in incomplete]
    return made


def ages(names: list[str]) -> list[float]:
    return [(NOW - t).total_seconds() / 86400 for t in (parse_snapshot_name(n) for n in names) if t is not None]


@pytest.mark.parametrize(
    ("snapshots", "keep_last", "older_than_days", "deleted_ages"),
    [
        (entries(0, 1, 2, 3, 4), None, None, []),
        (entries(0, 1, 2, 3, 4), 2, None, [4, 3, 2]),
        (entries(0, 1, 2, 3, 4), 10, None, []),
        (entries(0, 1, 2, 3, 4), None, 2.5, [4, 3]),
        (entries(0, 1, 2, 3, 4), 4, 0.5, [4]),  # both: beyond the newest 4 and older than half a day
        (entries(30, 40, 50), 2, 7, [50]),  # the newest 2 stay however old
        (entries(30, 40, 50), None, 7, [50, 40, 30]),
        (entries(1, 2, incomplete=(0.5, 1.5, 3)), 5, None, [3, 1.5]),  # the newest incomplete may be in progress
        (entries(incomplete=(1, 2)), 1, None, []),  # nothing complete yet: keep the attempts for inspection
    ],
)
def test_retention(
    snapshots: list[SnapshotEntry], keep_last: int | None, older_than_days: float | None, deleted_ages: list[float]
) -> None:
    older_than = timedelta(days=older_than_days) if older_than_days is not None else None
    doomed = expired(snapshots, now=NOW, keep_last=keep_last, older_than=older_than)
    assert ages(doomed) == deleted_ages


def test_retention_refuses_settings_that_would_delete_everything() -> None:
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        expired(entries(1), now=NOW, keep_last=0)
    with pytest.raises(ValueError, match="older_than must be a positive"):
        expired(entries(1), now=NOW, older_than=timedelta(0))


def test_snapshot_names_are_utc_timestamps(tmp_path: Path) -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert snapshot_name(at) == "20250102T030405Z"
    assert parse_snapshot_name("20250102T030405Z") == at
    assert parse_snapshot_name("latest") is None and parse_snapshot_name("20251399T000000Z") is None
    (tmp_path / "20250102T030405Z").mkdir()
    (tmp_path / "20250102T030405Z" / MANIFEST).write_text("{}")
    (tmp_path / "20250103T000000Z").mkdir()
    (tmp_path / "notes").mkdir()
    assert sorted(list_snapshots(str(tmp_path)), key=lambda e: e.name) == [
        SnapshotEntry("20250102T030405Z", at, True),
        SnapshotEntry("20250103T000000Z", datetime(2025, 1, 3, tzinfo=UTC), False),
    ]


# -- command line -------------------------------------------------------------------------------------------


def test_cli_create_verify_restore(origin: Origin, pg_server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")

    def invoke(url: str, *args: str) -> Any:
        try:
            return runner.invoke(
                snapshot_group, list(args), obj=_Context(), env={"RAGLINE_HOME": home, "RAGLINE_DATABASE_URL": url}
            )
        finally:
            use_services(None)

    dest = str(tmp_path / "cli-snap")
    created = invoke(origin.url, "create", dest)
    assert created.exit_code == 0, created.output
    assert f"snapshot written to {dest}: {origin.manifest.rows('documents')} documents" in created.stdout
    assert "chunks (384-dim)" in created.stdout

    verified = invoke(origin.url, "verify", dest)
    assert verified.exit_code == 0 and f"{dest}: ok:" in verified.stdout

    url = fresh_database(pg_server)
    restored = invoke(url, "restore", dest)
    assert restored.exit_code == 0, restored.output
    assert f"{origin.manifest.rows('chunks')} chunks" in restored.stdout
    conn = connect(url)
    assert vector_checksum(conn) == vector_checksum(origin.services.conn)
    conn.close()

    again = invoke(url, "restore", dest)
    assert again.exit_code == 1
    assert again.stderr.startswith("ragline: error: the database is not empty") and again.stderr.count("\n") == 1

    flip_bytes(Path(dest) / "models.parquet")
    broken = invoke(url, "verify", dest)
    assert broken.exit_code == 1
    assert (
        broken.stderr == f"ragline: error: {dest}/models.parquet is corrupted: its sha256 differs from the manifest's\n"
    )

    exists = invoke(origin.url, "create", dest)
    assert exists.exit_code == 1 and "already holds a snapshot" in exists.stderr
