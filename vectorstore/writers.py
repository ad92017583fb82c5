"""Background committers: group commits written on connections of their own, so the next batch is parsed
and embedded while earlier ones are written, and the server's per-row work (the full-text column above all)
for several batches runs on several cores.

Connections come from the process's pool (``vectorstore.db.open_pool``), one per batch being written: a batch
is still one transaction (``store.commit_documents``), whole or absent, and a connection broken by a server
restart is replaced by the pool. The caller keeps its batches' order of settlement and must not hand two
in-flight batches the same document (their ledger rows would race); ``Pipeline`` waits for a document's
earlier batch first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from psycopg_pool import ConnectionPool, PoolTimeout

from vectorstore import store
from vectorstore.db import Connection, DatabaseError, first_line


@dataclass(frozen=True)
class Written:
    committed: list[store.Committed]
    seconds: float
    """Time the group commit took on its connection (what the index-load cost model learns from)."""


class Writers:
    """``count`` committer threads writing on connections borrowed from ``pool`` (size it for them)."""

    def __init__(self, pool: ConnectionPool[Connection], count: int) -> None:
        if count < 1:
            raise ValueError("writers: at least one")
        self.count = count
        self._pool = pool
        self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="ragline-writer")

    def submit(
        self,
        source_id: int,
        items: Sequence[store.DocumentCommit],
        vectors: dict[uuid.UUID, np.ndarray],
        model_id: int,
    ) -> Future[Written]:
        """Commit ``items`` in one transaction on a pooled connection; the future raises what the group commit
        raised (``StaleChunksError``, a database error, ``DatabaseError`` when no connection can be had), the
        batch then rolled back."""
        return self._executor.submit(self._commit, source_id, list(items), vectors, model_id)

    def _commit(
        self,
        source_id: int,
        items: list[store.DocumentCommit],
        vectors: dict[uuid.UUID, np.ndarray],
        model_id: int,
    ) -> Written:
        try:
            with self._pool.connection() as conn:
                started = time.perf_counter()
                committed = store.commit_documents(conn, source_id, items, vectors, model_id)  # rolls back on error
                return Written(committed, time.perf_counter() - started)
        except PoolTimeout as err:
            raise DatabaseError(f"cannot connect to the database: {first_line(err)}") from err

    def close(self) -> None:
        """Wait for batches in flight (the pool belongs to the caller)."""
        self._executor.shutdown(wait=True)
