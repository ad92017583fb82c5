"""Snapshot and restore of N synthetic chunks on the embedded Postgres: time, size, peak memory.

    python bench/snapshot.py [--chunks 100000] [--dim 384]

Chunks get random unit vectors and ~600 characters of text, 20 per document. The store is loaded the way
ragline bulk-loads (binary COPY, HNSW built after), then snapshotted to a local directory, verified, and
restored into a second database (load and HNSW rebuild in one transaction). Peak RSS is the process's high
water mark after each step: it stays flat while N grows if the export and the load really stream.
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

from vectorstore.db import connect
from vectorstore.embedded import embedded_url, stop_embedded
from vectorstore.migrations import migrate
from vectorstore.snapshot import create_snapshot, restore_snapshot, verify_snapshot

WORDS = ["ledger", "vector", "snapshot", "restore", "chunk", "index", "cursor", "source", "model", "page", "token"]


def new_database(admin_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)


def load(url: str, chunks: int, dim: int, batch: int = 5000) -> None:
    conn = connect(url)
    migrate(conn, dim)
    rng = np.random.default_rng(0)
    docs = max(1, chunks // 20)
    with conn.transaction():
        conn.execute("INSERT INTO sources (name, kind, cursor) VALUES ('bench', 'pdf', '{\"page\": 1}')")
        conn.execute("INSERT INTO models (name, revision, dim, normalized) VALUES ('bench', '1', %s, true)", (dim,))
        conn.execute(
            "INSERT INTO documents (source_id, external_id, uri, content_hash, status, chunk_count)"
            " SELECT 1, 'doc-' || i, 'file:///doc-' || i, md5(i::text), 'committed', 20"
            " FROM generate_series(1, %s) i",
            (docs,),
        )
        conn.execute("DROP INDEX chunks_embedding_hnsw")
        copy_sql = (
            "COPY chunks (id, document_id, chunk_index, text, token_count, model_id, embedding)"
            " FROM STDIN (FORMAT BINARY)"
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
                    copy.write_row((uuid.uuid4(), k // 20 + 1, k % 20, text, 120, 1, vectors[i]))
        conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        conn.execute(
            "CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)"
            " WITH (m = 16, ef_construction = 64)"
        )
    conn.close()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        admin = embedded_url(home)
        try:
            source, target = new_database(admin), new_database(admin)
            t0 = time.perf_counter()
            load(source, args.chunks, args.dim)
            print(f"load {args.chunks} chunks ({args.dim}-dim) + HNSW: {time.perf_counter() - t0:.1f} s")
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
            print(f"restore (load + HNSW rebuild): {time.perf_counter() - t0:.1f} s, peak RSS {peak_mb():.0f} MB")
            conn.close()
        finally:
            stop_embedded(home)


if __name__ == "__main__":
    main()
