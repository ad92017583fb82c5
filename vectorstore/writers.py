"""Background committers: group commits written on connections of their own, so the next batch is parsed
and embedded while earlier ones are written, and the server's per-row work (the full-text column above all)
for several batches runs on several cores.

One connection serves one batch at a time: a batch is still one transaction (``store.commit_documents``),
whole or absent. The caller keeps its batches' order of settlement and must not hand two in-flight batches
the same document (their ledger rows would race); ``Pipeline`` waits for a document's earlier batch first.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vectorstore import store
from vectorstore.db import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    committed: list[store.Committed]
    seconds: float
    """Time the group commit took on its connection (what the index-load cost model learns from)."""


class Writers:
    """``count`` committer threads, each with its own connection opened on first use by ``connect``."""

    def __init__(self, connect: Callable[[], Connection], count: int) -> None:
        if count < 1:
            raise ValueError("writers: at least one")
        self.count = count
        self._connect = connect
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="ragline-writer")

    def submit(
        self,
        source_id: int,
        items: Sequence[store.DocumentCommit],
        vectors: dict[uuid.UUID, np.ndarray],
        model_id: int,
    ) -> Future[Written]:
        """Commit ``items`` in one transaction on a writer's connection; the future raises what the group
        commit raised (``StaleChunksError``, a database error), the batch then rolled back."""
        return self._executor.submit(self._commit, source_id, list(items), vectors, model_id)

    @property
    def opened(self) -> int:
        """Connections opened so far (one per writer thread that has committed, more after a broken one)."""
        with self._lock:
            return len(self._conns)

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _commit(
        self,
        source_id: int,
        items: list[store.DocumentCommit],
        vectors: dict[uuid.UUID, np.ndarray],
        model_id: int,
    ) -> Written:
        conn = self._conn()
        started = time.perf_counter()
        committed = store.commit_documents(conn, source_id, items, vectors, model_id)  # rolls back on error
        return Written(committed, time.perf_counter() - started)

    def close(self) -> None:
        """Wait for batches in flight, then close the connections."""
        self._executor.shutdown(wait=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to save
                log.debug("closing a writer connection failed", exc_info=True)
