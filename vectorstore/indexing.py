"""HNSW index upkeep: built with enough memory, dropped for large loads and built again after, with the
costs of each way measured on this store so the next load chooses with real figures (``vectorstore.bulk``).

A load that drops a generation's index registers as a holder in ``index_loads``; the last holder to finish
builds the index again. A holder killed outright is found by ``repair`` (its pid is gone on this host), so a
crash never leaves a generation without its index for longer than the next run's start.

Such a load drops the full-text GIN index too (every row enters it with ~60 words; one build after the load
costs half of that: 0.6 s against 1.2-1.3 s of inserts per 40k rows here). It is shared by all
generations, so it is built again when the last holder of any generation finishes, or by ``repair``.

Every build that happens (not a no-op) counts in ``ragline_index_builds_total{kind}`` (hnsw, full_text) and
its time in ``ragline_index_build_duration_seconds``: writes to chunks wait while one runs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from psycopg import sql

from telemetry.metrics import INDEX_BUILD_SECONDS, INDEX_BUILDS
from vectorstore import bulk, generations
from vectorstore.db import Connection
from vectorstore.generations import Generation
from vectorstore.migrations import FULL_TEXT_INDEX, full_text_ddl, full_text_present, index_ddl, index_name
from vectorstore.runs import pid_alive
from vectorstore.settings import DatabaseSettings

log = logging.getLogger(__name__)

_LOCK = 0x72676C69  # "rgli": one advisory lock per generation, (this, model id)
_FULL_TEXT_LOCK = 0  # (_LOCK, 0): the full-text index, shared by all generations (model ids start at 1)

_STAT_KEYS = {
    "live_insert": "live_insert_s_per_row",
    "plain_insert": "plain_insert_s_per_row",
    "build": "build_s_per_row",
}


@dataclass(frozen=True)
class IndexOptions:
    m: int = 16
    ef_construction: int = 64
    index_type: str = "vector"
    maintenance_work_mem: str = "1GB"
    parallel_workers: int | None = None
    min_rows: int = 1000

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> IndexOptions:
        return cls(
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            index_type=settings.index_type,
            maintenance_work_mem=settings.maintenance_work_mem,
            parallel_workers=settings.parallel_maintenance_workers,
            min_rows=settings.bulk_min_rows,
        )


def _lock(conn: Connection, model_id: int) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, model_id))


def generation_rows(conn: Connection, model_id: int) -> int:
    row = conn.execute("SELECT count(*) AS n FROM chunks WHERE model_id = %s", (model_id,)).fetchone()
    conn.commit()
    return int(row["n"]) if row else 0


def costs(conn: Connection) -> bulk.IndexCosts:
    """The cost model with this store's measured figures where there are any."""
    rows = conn.execute("SELECT key, value FROM store_stats WHERE key = ANY(%s)", (list(_STAT_KEYS.values()),))
    measured = {r["key"]: float(r["value"]) for r in rows.fetchall()}
    conn.commit()
    defaults = bulk.IndexCosts()
    return bulk.IndexCosts(
        live_insert=measured.get(_STAT_KEYS["live_insert"], defaults.live_insert),
        plain_insert=measured.get(_STAT_KEYS["plain_insert"], defaults.plain_insert),
        build=measured.get(_STAT_KEYS["build"], defaults.build),
        build_fixed=defaults.build_fixed,
    )


def record_cost(conn: Connection, kind: str, seconds: float, rows: int) -> None:
    """Blend one measurement (``kind``: live_insert, plain_insert or build) into the store's figures."""
    if rows < 100 or seconds <= 0:  # too small to say anything
        return
    key = _STAT_KEYS[kind]
    with conn.transaction():
        row = conn.execute("SELECT value FROM store_stats WHERE key = %s FOR UPDATE", (key,)).fetchone()
        value = bulk.ewma(float(row["value"]) if row else None, seconds / rows)
        conn.execute(
            """
            INSERT INTO store_stats (key, value) VALUES (%s, %s)
            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
            """,
            (key, value),
        )


def _maintenance(conn: Connection, options: IndexOptions) -> None:
    conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(options.maintenance_work_mem)))
    if options.parallel_workers is not None:
        conn.execute(
            sql.SQL("SET LOCAL max_parallel_maintenance_workers = {}").format(sql.Literal(options.parallel_workers))
        )


def full_text_index_missing(conn: Connection) -> bool:
    """The full-text column is there but its GIN index is not (a load dropped it)."""
    row = conn.execute("SELECT to_regclass(%s) IS NULL AS missing", (FULL_TEXT_INDEX,)).fetchone()
    return bool(row and row["missing"]) and full_text_present(conn)


def build_full_text_index(conn: Connection, options: IndexOptions) -> float:
    """Build the GIN index of the full-text column if it is missing, unless a deferred load still runs (it
    would only pay for it row by row); returns the seconds it took. The connection must be idle."""
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, _FULL_TEXT_LOCK))
        if not full_text_index_missing(conn) or conn.execute("SELECT 1 FROM index_loads LIMIT 1").fetchone():
            return 0.0
        _maintenance(conn, options)
        conn.execute(full_text_ddl())
    seconds = time.perf_counter() - started
    _built("full_text", seconds)
    log.info("built the full-text index in %.1f s", seconds)
    return seconds


def _built(kind: str, seconds: float) -> None:
    INDEX_BUILDS.labels(kind).inc()
    INDEX_BUILD_SECONDS.observe(seconds)


def build_index(conn: Connection, generation: Generation, options: IndexOptions) -> float:
    """Build the generation's HNSW index (no-op if present); returns the seconds it took. Writes to chunks
    wait meanwhile (CREATE INDEX holds a SHARE lock); searches go on, exact until the index is there."""
    started = time.perf_counter()
    with conn.transaction():
        _lock(conn, generation.id)
        if generations.index_present(conn, generation.id):
            return 0.0
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(generation.id))))  # invalid
        _maintenance(conn, options)
        rows = conn.execute("SELECT count(*) AS n FROM chunks WHERE model_id = %s", (generation.id,)).fetchone()
        n = int(rows["n"]) if rows else 0
        conn.execute(index_ddl(generation.id, generation.dim, options.index_type, options.m, options.ef_construction))
    seconds = time.perf_counter() - started
    _built("hnsw", seconds)
    with conn.transaction():
        conn.execute("ANALYZE chunks")  # searches judge the table's size by the planner's estimate
    record_cost(conn, "build", seconds, n)
    log.info("built the index of %s over %d chunks in %.1f s", generation.label, n, seconds)
    return seconds


def _holders(conn: Connection, model_id: int) -> list[dict[str, object]]:
    return conn.execute("SELECT holder, host, pid FROM index_loads WHERE model_id = %s", (model_id,)).fetchall()


def _drop_dead_holders(conn: Connection, model_id: int) -> None:
    here = socket.gethostname()
    for h in _holders(conn, model_id):
        if h["host"] == here and not pid_alive(int(str(h["pid"]))):
            log.warning("a load without the index of model %d died (pid %s): its rebuild is ours", model_id, h["pid"])
            conn.execute("DELETE FROM index_loads WHERE holder = %s", (h["holder"],))


def repair(conn: Connection, options: IndexOptions) -> list[int]:
    """Build the index of the serving generation, and the full-text index, if a load that dropped them
    died; returns the models whose index was built."""
    built: list[int] = []
    serving = generations.active(conn)
    present = serving is not None and generations.index_present(conn, serving.id)
    full_text_missing = full_text_index_missing(conn)
    # Reads open a transaction: commit, or the blocks below become savepoints and their locks (and the
    # index) stay invisible to other sessions until some later commit.
    conn.commit()
    if full_text_missing:
        with conn.transaction():
            for row in conn.execute("SELECT DISTINCT model_id FROM index_loads ORDER BY 1").fetchall():
                _lock(conn, row["model_id"])
                _drop_dead_holders(conn, row["model_id"])
        build_full_text_index(conn, options)
    if serving is None or present:
        return built
    with conn.transaction():
        _lock(conn, serving.id)
        _drop_dead_holders(conn, serving.id)
        waiting = bool(_holders(conn, serving.id))
    if not waiting:
        build_index(conn, serving, options)
        built.append(serving.id)
    return built


class IndexLoad:
    """One run's writes into one generation, choosing live or deferred indexing as the load grows.

    ``before_write(n)`` is called before each batch of ``n`` new rows: once the projected load makes a
    deferred index cheaper (measured costs), the index is dropped and stays dropped until ``finish``, which
    builds it again unless another deferred load still runs. ``observe`` feeds measured write times back.
    A generation being built (not yet serving) never has a live index: it is built once, before the switch.
    """

    def __init__(
        self, conn: Connection, generation: Generation, options: IndexOptions, *, expected: int | None = None
    ) -> None:
        self.conn = conn
        self.generation = generation
        self.options = options
        self.expected = expected
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.deferred = False
        self.written = 0
        self.full_text_build_s = 0.0
        """Of ``finish``'s seconds, those spent building the full-text index again."""
        self._existing: int | None = None
        self._costs: bulk.IndexCosts | None = None

    @property
    def strategy(self) -> bulk.Strategy:
        return bulk.Strategy.DEFERRED if self.deferred else bulk.Strategy.LIVE

    def before_write(self, incoming: int) -> bulk.Strategy:
        if self.deferred or incoming <= 0:
            return self.strategy
        if self._existing is None:
            self._existing = generation_rows(self.conn, self.generation.id)
            self._costs = costs(self.conn)
        unindexed = self.generation.state == "building" and not generations.index_present(self.conn, self.generation.id)
        self.conn.commit()  # before _defer's transaction, which must be a real one
        if unindexed:
            return self.strategy  # nothing live to keep up; the switch builds it once
        total = bulk.projected(self.written + incoming, self.expected)
        # Rows already written live are in the graph and paid for: the choice is about the rest of the load.
        remaining = total - self.written
        existing = self._existing + self.written
        if bulk.choose(existing, remaining, self._costs, min_rows=self.options.min_rows) is bulk.Strategy.DEFERRED:
            self._defer()
        return self.strategy

    def observe(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` took ``seconds`` to commit (under the current strategy)."""
        self.written += rows
        kind = "plain_insert" if self.deferred else "live_insert"
        if self.deferred or generations.index_present(self.conn, self.generation.id):
            record_cost(self.conn, kind, seconds, rows)
        self.conn.commit()

    def _defer(self) -> None:
        with self.conn.transaction():
            _lock(self.conn, self.generation.id)
            self.conn.execute(
                "INSERT INTO index_loads (holder, model_id, host, pid) VALUES (%s, %s, %s, %s)",
                (self.holder, self.generation.id, socket.gethostname(), os.getpid()),
            )
            self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(self.generation.id))))
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, _FULL_TEXT_LOCK))
            self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(FULL_TEXT_INDEX)))
        self.deferred = True
        log.info(
            "large load into %s (%d rows so far, %s expected): index dropped, built after the load",
            self.generation.label,
            self.written,
            self.expected,
        )

    def finish(self) -> float:
        """End the load: the last deferred load of the generation builds its index; returns build seconds.
        The connection must be idle (no open transaction): the build is committed here."""
        if not self.deferred:
            return 0.0
        with self.conn.transaction():
            _lock(self.conn, self.generation.id)
            self.conn.execute("DELETE FROM index_loads WHERE holder = %s", (self.holder,))
            _drop_dead_holders(self.conn, self.generation.id)
            others = bool(_holders(self.conn, self.generation.id))
        self.deferred = False
        current = generations.by_id(self.conn, self.generation.id)
        self.conn.commit()
        seconds = self.full_text_build_s = build_full_text_index(self.conn, self.options)  # 0 while a load runs
        if others or current is None or current.state == "retired":
            return seconds
        if current.state == "building":
            return seconds  # built once, before the switch
        return seconds + build_index(self.conn, current, self.options)
