"""Process-wide services, opened on first use: the pipeline's own connection (migrated at open), one
connection pool for everything else (searches, background writers, the warm service's workers), one warm
model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import psycopg
from psycopg_pool import ConnectionPool

from embedding.backend_status import calibration_dir
from embedding.model import TextEmbedder
from embedding.pool import EmbeddingPool
from embedding.query import query_embedder
from flows.pipeline import Pipeline
from flows.sandbox import ParseSandbox
from flows.settings import RaglineSettings, database_url, load_settings
from vectorstore import generations, search
from vectorstore.db import Connection, DatabaseError, connect, open_pool, reconnect, register_pgvector
from vectorstore.generations import Generation
from vectorstore.migrations import migrate, set_full_text
from vectorstore.search import SearchFilter, SearchHit
from vectorstore.settings import SearchSettings
from vectorstore.writers import Writers


@dataclass
class Services:
    settings: RaglineSettings
    shared_embedder: TextEmbedder | None = field(default=None, repr=False)
    calibrate_at_start: bool = False
    """Whether the pool measures an uncalibrated device's precision when it starts (``ragline serve``, which
    lives long enough to profit); runs start at the device's default and use a calibration once cached."""
    _query_embedders: dict[int, TextEmbedder] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _query_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _conn_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def embedder(self) -> TextEmbedder:
        """The worker pool (one worker per GPU, else the CPU), cheap until first used: workers start and load
        the model lazily. Calibration results are cached under RAGLINE_HOME. Its first request runs the model
        canary first (``flows.canary``; ``drift.canary``); a caller's shared embedder is used as given."""
        if self.shared_embedder is not None:
            return self.shared_embedder
        embedding = self.settings.embedding
        update: dict[str, object] = {}
        if embedding.pool.calibration_dir is None:
            update["calibration_dir"] = self.settings.home / "calibration"
        if not self.calibrate_at_start and "calibrate" not in embedding.pool.model_fields_set:
            update["calibrate"] = "cached_only"  # a run does not wait for a measurement: serve makes it
        if update:
            embedding = embedding.model_copy(update={"pool": embedding.pool.model_copy(update=update)})
        if not self.settings.drift.canary:
            return EmbeddingPool(embedding)
        from flows.canary import CheckedPool, at_start

        settings = self.settings
        starter = at_start(
            lambda: connect(database_url(settings), connect_timeout=settings.database.connect_timeout),
            settings.drift.canary_tolerance,
        )
        return CheckedPool(embedding, starter=starter)  # the model canary checked before its first request

    @cached_property
    def conn(self) -> Connection:
        conn = connect(database_url(self.settings), connect_timeout=self.settings.database.connect_timeout)
        migrate(
            conn,
            self.embedder.dimension,
            hnsw_m=self.settings.database.hnsw_m,
            hnsw_ef_construction=self.settings.database.hnsw_ef_construction,
        )
        set_full_text(conn, self.settings.database.full_text)
        if self.settings.database.row_level_security:
            from vectorstore.tenancy import ensure_row_level_security

            ensure_row_level_security(conn)
        return conn

    @cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(self.conn, self.settings, self.embedder, self.writers, self.parser, self.reconnect)

    def reconnect(self) -> Connection:
        """A new connection for the pipeline after its own went away (a restart, a failover, a kill), with
        backoff for up to ``database.reconnect_seconds``; the embedded server is started again if it stopped."""
        old = self.__dict__.pop("conn", None)
        if old is not None:
            with contextlib.suppress(psycopg.Error):
                old.close()
        database = self.settings.database

        def open_conn() -> Connection:
            conn = connect(database_url(self.settings), connect_timeout=database.connect_timeout)
            register_pgvector(conn)
            return conn

        conn = reconnect(open_conn, seconds=database.reconnect_seconds)
        self.__dict__["conn"] = conn
        return conn

    @cached_property
    def parser(self) -> ParseSandbox:
        """Parser processes (``parsing``), started on the first document to parse."""
        return ParseSandbox(self.settings.parsing)

    @cached_property
    def writers(self) -> Writers | None:
        """The pipeline's background committers (``database.writers``), on the pool's connections."""
        count = self.settings.database.writers
        return Writers(self.pool, count) if count else None

    @cached_property
    def pool(self) -> ConnectionPool[Connection]:
        """The process's pool: ``database.pool_size`` connections for searches, plus one per background
        writer and per warm worker of ``ragline serve``, which hold theirs while they write."""
        _ = self.conn  # migrated first: pooled connections need pgvector's types
        database = self.settings.database
        size = database.pool_size + database.writers + self.settings.serve.workers
        return open_pool(database_url(self.settings), size=size, connect_timeout=database.connect_timeout)

    def query_embedder(self, serving: Generation) -> TextEmbedder:
        """The model that embeds queries for ``serving``: a float32 query model (``embedding.query``) of the
        generation that serves (the configured one, or while a new generation is being built, the old one: it
        must still be installed), loaded on first use and kept. Never the ingestion pool: a query must not
        start workers, calibrate, or wait behind an ingestion's batches."""
        shared = self.shared_embedder
        if shared is not None and (shared.identity.name, shared.identity.revision) == (serving.name, serving.revision):
            return shared  # a caller's own plain model (tests, an embedding application)
        with self._lock:
            cached = self._query_embedders.get(serving.id)
            if cached is None:
                embedding = self.settings.embedding
                cached = query_embedder(
                    embedding.model_copy(update={"model": serving.name}), calibration_dir(embedding, self.settings.home)
                )
                if cached.identity.revision != serving.revision or cached.dimension != serving.dim:
                    raise DatabaseError(
                        f"search is served by {serving.label}, but the installed {serving.name} is "
                        f"{cached.identity.revision} (dim {cached.dimension}): install that revision, or finish "
                        "the re-embed into the configured model (ragline generation migrate)"
                    )
                self._query_embedders[serving.id] = cached
        return cached

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Connection]:
        """A pooled connection once the pool is open (the service, several threads), else the process's own:
        one search from the CLI opens no pool."""
        if "pool" in self.__dict__:
            with self.pool.connection() as conn:
                yield conn
            return
        with self._conn_lock:
            yield self.conn

    def search(
        self, query: str, k: int, *, settings: SearchSettings | None = None, where: SearchFilter | None = None
    ) -> list[SearchHit]:
        """Embed ``query`` with the serving generation's model and search it; safe from many threads."""
        settings = settings or self.settings.search
        with self._reader() as conn:
            serving = generations.active(conn)
            conn.commit()
            if serving is None:
                return []
            embedder = self.query_embedder(serving)
            with self._query_lock:  # the tokenizer is not safe from several threads; a query takes milliseconds
                vector = embedder.embed([query])[0]
            return search.search(
                conn,
                vector,
                k,
                text=query,
                settings=settings,
                where=where,
                generation=serving,
                row_level_security=self.settings.database.row_level_security,
            )

    def close(self) -> None:
        pipeline = self.__dict__.get("pipeline")
        if pipeline is not None and "conn" in self.__dict__ and not self.conn.closed:
            pipeline.finish_quietly()
        writers = self.__dict__.pop("writers", None)
        if writers is not None:
            writers.close()
        parser = self.__dict__.pop("parser", None)
        if parser is not None:
            parser.close()
        pool = self.__dict__.pop("pool", None)
        if pool is not None:
            pool.close()
        self._query_embedders.clear()
        if self.shared_embedder is None:
            embedder = self.__dict__.pop("embedder", None)
            if isinstance(embedder, EmbeddingPool):
                embedder.close()
        self.__dict__.pop("pipeline", None)
        if "conn" in self.__dict__:
            self.conn.close()
            del self.__dict__["conn"]


_services: Services | None = None
_services_lock = threading.Lock()


def services() -> Services:
    """The services of this process, built from the environment the first time."""
    global _services
    with _services_lock:
        if _services is None:
            _services = Services(load_settings())
        return _services


def use_services(new: Services | None) -> None:
    """Install (or clear) this process's services: the CLI installs the settings it validated."""
    global _services
    with _services_lock:
        if _services is not None and _services is not new:
            _services.close()
        _services = new
