"""Background committers against the real embedded Postgres."""

from __future__ import annotations

import threading
import time

import pytest
from psycopg_pool import ConnectionPool

from embedding.model import Embedder
from tests.vectorstore.test_store import _texts_by_document, _version
from vectorstore import generations, ledger, store
from vectorstore.db import Connection, open_pool
from vectorstore.writers import Writers


def _writers(database_url: str, count: int) -> tuple[Writers, ConnectionPool[Connection], list[int]]:
    """Writers on a real pool, remembering each pooled connection's backend pid."""
    pids: list[int] = []
    lock = threading.Lock()

    def remember(c: Connection) -> None:
        row = c.execute("SELECT pg_backend_pid() AS pid").fetchone()
        with lock:
            pids.append(int(row["pid"]) if row else -1)

    pool = open_pool(database_url, size=count, on_connect=remember)
    return Writers(pool, count), pool, pids


def test_batches_commit_on_writer_connections_and_a_failed_batch_leaves_nothing(
    conn: Connection, database_url: str, embedder: Embedder
) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    model_id = generations.register(conn, embedder.identity).id
    conn.commit()
    writers, pool, pids = _writers(database_url, 2)
    try:
        batches = [
            [_version(f"d{b}-{i}", [f"batch {b} doc {i} one", f"batch {b} doc {i} two"]) for i in range(3)]
            for b in range(4)
        ]
        futures = []
        for batch in batches:
            texts = [c.text for item in batch for c in item.chunks]
            vectors = dict(zip([c.id for item in batch for c in item.chunks], embedder.embed(texts), strict=True))
            futures.append(writers.submit(source_id, batch, vectors, model_id))
        results = [f.result(timeout=60) for f in futures]
        assert [[c.written for c in r.committed] for r in results] == [[2, 2, 2]] * 4
        assert all(r.seconds > 0 for r in results)
        assert len(_texts_by_document(conn)) == 12
        main_pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
        conn.commit()
        assert 1 <= len(pids) <= 2 and main_pid and main_pid["pid"] not in pids

        # A batch that cannot commit (a chunk claimed stored is not) raises through its future and rolls
        # back whole; the writer's connection serves the next batch.
        good, stale = _version("fresh", ["fresh one"]), _version("d0-0", ["never stored"])
        vectors = dict(zip([good.chunks[0].id], embedder.embed(["fresh one"]), strict=True))
        with pytest.raises(store.StaleChunksError):
            writers.submit(source_id, [good, stale], vectors, model_id).result(timeout=60)
        assert "fresh" not in _texts_by_document(conn)
        assert [c.written for c in writers.submit(source_id, [good], vectors, model_id).result(60).committed] == [1]
        assert _texts_by_document(conn)["fresh"] == ["fresh one"]
    finally:
        writers.close()
        pool.close()
    deadline = time.monotonic() + 10  # a backend leaves pg_stat_activity as its process exits, just after
    while True:
        alive = conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()
        conn.commit()
        if alive == {"n": 0} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alive == {"n": 0}
