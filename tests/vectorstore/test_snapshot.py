"""Snapshots against the real embedded Postgres and the real model: real PDFs ingested through the pipeline,
snapshotted, restored into fresh databases and compared row by row, vector by vector and query by query."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
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

from embedding.model import Embedder, ModelIdentity
from flows.pipeline import ingest_pdf_paths
from flows.runtime import Services, use_services
from flows.settings import load_settings
from ragline.cli import _Context
from ragline.snapshot_cmd import snapshot as snapshot_group
from tests.conftest import CountingEmbedder, fresh_database
from tests.pdfgen import not_a_pdf, text_pdf
from vectorstore import cursors, ledger
from vectorstore.db import Connection, DatabaseError, connect
from vectorstore.migrations import MIGRATIONS, migrate
from vectorstore.snapshot import (
    MANIFEST,
    TABLES,
    Manifest,
    SnapshotEntry,
    SnapshotError,
    create_snapshot,
    expired,
    list_snapshots,
    parse_snapshot_name,
    restore_snapshot,
    snapshot_name,
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


def exact_top(conn: Connection, vector: np.ndarray, k: int = 10) -> list[uuid.UUID]:
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        found = conn.execute("SELECT id FROM chunks ORDER BY embedding <=> %s, id LIMIT %s", (vector, k)).fetchall()
    return [r["id"] for r in found]


def index_top(conn: Connection, vector: np.ndarray, k: int = 10) -> list[uuid.UUID]:
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = conn.execute("EXPLAIN SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT %s", (vector, k))
        assert "chunks_embedding_hnsw" in " ".join(str(r) for r in plan.fetchall())
        found = conn.execute("SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT %s", (vector, k)).fetchall()
    return [r["id"] for r in found]


# -- create -------------------------------------------------------------------------------------------------


def test_manifest_describes_the_store(origin: Origin, embedder: Embedder) -> None:
    conn = origin.services.conn
    manifest = json.loads((origin.snapshot / MANIFEST).read_text())
    assert manifest["format"] == "ragline-snapshot" and manifest["format_version"] == 1
    assert manifest["schema_version"] == max(v for v, _, _ in MIGRATIONS)
    assert manifest["vector_dim"] == 384
    assert manifest["postgres_version"] and manifest["pgvector_version"]
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert manifest["hnsw"] == {"m": 16, "ef_construction": 64}
    (model,) = manifest["models"]
    me = embedder.identity
    assert (model["name"], model["revision"], model["dim"], model["normalized"]) == (
        me.name,
        me.revision,
        me.dim,
        me.normalized,
    )
    assert model["chunks"] == counts(conn)["chunks"] > 150
    for table, entry in manifest["tables"].items():
        data = (origin.snapshot / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == counts(conn)[table]
    assert "tsv" not in [c["name"] for c in manifest["tables"]["chunks"]["columns"]]  # generated: not stored


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

    vectors = embedder.embed(QUERIES)
    assert len(QUERIES) >= 20
    overlap = []
    for vector in vectors:
        exact = exact_top(target, vector)
        assert exact == exact_top(src, vector)
        overlap.append(len(set(index_top(target, vector)) & set(exact)) / len(exact))
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
    with pytest.raises(SnapshotError, match=r"vectors come from .*all-MiniLM-L6-v2.*configured model is acme/other"):
        restore_snapshot(target, str(origin.snapshot), model=other)
    assert rows(target, "SELECT to_regclass('chunks') IS NULL AS untouched")[0]["untouched"]
    restore_snapshot(target, str(origin.snapshot), model=other, force=True)
    assert counts(target) == counts(origin.services.conn)


def test_a_database_of_another_dimension_is_refused(origin: Origin, target: Connection) -> None:
    migrate(target, 8)
    with pytest.raises(SnapshotError, match="holds 8-dim vectors, the snapshot 384-dim"):
        restore_snapshot(target, str(origin.snapshot))


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
    pq.write_table(documents.filter(pc.not_equal(documents.column("id"), needed)), snap / "documents.parquet")
    data = (snap / "documents.parquet").read_bytes()
    edit_manifest(
        snap,
        lambda m: m["tables"]["documents"].update(
            rows=documents.num_rows - 1, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
        ),
    )
    verify_snapshot(str(snap))
    with pytest.raises(DatabaseError, match=r"nothing was restored: .*foreign key"):
        restore_snapshot(target, str(snap))
    assert counts(target) == dict.fromkeys(TABLES, 0)
    indexes = rows(target, "SELECT indexname FROM pg_indexes WHERE tablename = 'chunks'")
    assert "chunks_embedding_hnsw" in {r["indexname"] for r in indexes}  # the drop was rolled back too


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
