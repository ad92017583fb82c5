"""Stores beyond one model of one schema: a re-embed in progress (vectors of two dimensions), an empty store,
a snapshot from before model generations."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.model import Embedder, ModelIdentity
from tests.support.db import fresh_database
from tests.vectorstore.snapshot.support import (
    CUSTOM_INDEX,
    QUERIES,
    Origin,
    counts,
    damaged,
    edit_manifest,
    exact_top,
    hnsw_indexes,
    index_top,
    replace_table,
    rows,
    serving,
    vector_checksum,
)
from vectorstore import generations
from vectorstore.db import Connection, connect
from vectorstore.generations import Generation
from vectorstore.indexing import IndexOptions, build_index
from vectorstore.migrations import migrate
from vectorstore.snapshot import MANIFEST, TABLES, SnapshotError, create_snapshot, restore_snapshot, verify_snapshot

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
