"""Snapshot and restore of N synthetic chunks on the embedded Postgres: time, size, peak memory.

    python bench/snapshot.py [--chunks 100000] [--dim 384] [--building-dim 768]

Chunks get random unit vectors and ~600 characters of text, 20 per document. The store is loaded the way
ragline bulk-loads (binary COPY, then the serving generation's HNSW index built by ``indexing.build_index``),
then snapshotted to a local directory, verified, and restored into a second database (load and index builds
in one transaction). With ``--building-dim``, every chunk also has a vector of a generation being built with
that dimension (a re-embed in progress, with its own index): the snapshot then stores variable-length vector
lists. Peak RSS is the process's high water mark after each step: it stays flat while N grows if the export
and the load really stream.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from vectorstore import generations
from vectorstore.db import Connection, connect
from vectorstore.embedded import embedded_url, stop_embedded
from vectorstore.indexing import IndexOptions, build_index
from vectorstore.migrations import migrate
from vectorstore.snapshot import create_snapshot, restore_snapshot, verify_snapshot

WORDS = ["ledger", "vector", "snapshot", "restore", "chunk", "index", "cursor", "source", "model", "page", "token"]


def new_database(admin_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)


def _add_model(conn: Connection, dim: int, state: str) -> int:
    row = conn.execute(
        "INSERT INTO models (name, revision, dim, normalized, state) VALUES (%s, '1', %s, true, %s) RETURNING id",
        (f"bench-{dim}-{state}", dim, state),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def _copy_chunks(conn: Connection, chunks: int, model_id: int, dim: int, batch: int) -> None:
    rng = np.random.default_rng(model_id)
    copy_sql = (
        "COPY chunks (id, document_id, chunk_index, text, token_count, model_id, embedding) FROM STDIN (FORMAT BINARY)"
    )
    with conn.cursor().copy(copy_sql) as copy:
        copy.set_types(["uuid", "int8", "int4", "text", "int4", "int4", "vector"])
        for start in range(0, chunks, batch):
            n = min(batch, chunks - start)
            vectors = rng.standard_normal((n, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for i in range(n):
                k = start + i
                text = " ".join(WORDS[(k + j) % len(WORDS)] for j in range(90))
                copy.write_row((uuid.uuid4(), k // 20 + 1, k % 20, text, 120, model_id, vectors[i]))


def load(url: str, chunks: int, dim: int, building_dim: int | None, batch: int = 5000) -> None:
    conn = connect(url)
    migrate(conn, dim)
    docs = max(1, chunks // 20)
    with conn.transaction():
        conn.execute("INSERT INTO sources (name, kind, cursor) VALUES ('bench', 'pdf', '{\"page\": 1}')")
        conn.execute(
            "INSERT INTO documents (source_id, external_id, uri, content_hash, status, chunk_count)"
            " SELECT 1, 'doc-' || i, 'file:///doc-' || i, md5(i::text), 'committed', 20"
            " FROM generate_series(1, %s) i",
            (docs,),
        )
        # The store is new, so no generation has an index yet: the load goes in without one.
        wanted = [(dim, "active")] + ([(building_dim, "building")] if building_dim is not None else [])
        model_ids = []
        for model_dim, state in wanted:
            model_ids.append(_add_model(conn, model_dim, state))
            _copy_chunks(conn, chunks, model_ids[-1], model_dim, batch)
    for model_id in model_ids:
        generation = generations.by_id(conn, model_id)
        assert generation is not None
        build_index(conn, generation, IndexOptions(maintenance_work_mem="512MB"))
    conn.close()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--building-dim", type=int, default=None, help="Add a generation being built, of this dim.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        admin = embedded_url(home)
        try:
            source, target = new_database(admin), new_database(admin)
            t0 = time.perf_counter()
            load(source, args.chunks, args.dim, args.building_dim)
            dims = f"{args.dim}-dim" + (f" + {args.building_dim}-dim building" if args.building_dim else "")
            print(f"load {args.chunks} chunks ({dims}) + HNSW: {time.perf_counter() - t0:.1f} s")
            print(f"peak RSS before snapshot: {peak_mb():.0f} MB")

            dest = str(Path(tmp) / "snap")
            conn = connect(source)
            t0 = time.perf_counter()
            manifest = create_snapshot(conn, dest)
            elapsed = time.perf_counter() - t0
            conn.close()
            size = sum(t.bytes for t in manifest.tables.values())
            print(
                f"snapshot: {elapsed:.1f} s, {size / 1e6:.1f} MB "
                f"(chunks.parquet {manifest.tables['chunks'].bytes / 1e6:.1f} MB), peak RSS {peak_mb():.0f} MB"
            )

            t0 = time.perf_counter()
            verify_snapshot(dest)
            print(f"verify: {time.perf_counter() - t0:.1f} s")

            conn = connect(target)
            t0 = time.perf_counter()
            restore_snapshot(conn, dest)
            print(f"restore (load + HNSW rebuilds): {time.perf_counter() - t0:.1f} s, peak RSS {peak_mb():.0f} MB")
            conn.close()
        finally:
            stop_embedded(home)


if __name__ == "__main__":
    main()
