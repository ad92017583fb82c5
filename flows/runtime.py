"""Process-wide services: one database connection and one warm model per process, opened on first use."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

from embedding.model import TextEmbedder
from embedding.pool import EmbeddingPool
from flows.pipeline import Pipeline
from flows.settings import RaglineSettings, database_url, load_settings
from vectorstore.db import Connection, connect
from vectorstore.migrations import migrate


@dataclass
class Services:
    settings: RaglineSettings
    shared_embedder: TextEmbedder | None = field(default=None, repr=False)

    @cached_property
    def embedder(self) -> TextEmbedder:
        """The worker pool (one worker per GPU, else the CPU), cheap until first used: workers start and load
        the model lazily. Calibration results are cached under RAGLINE_HOME."""
        if self.shared_embedder is not None:
            return self.shared_embedder
        embedding = self.settings.embedding
        if embedding.pool.calibration_dir is None:
            pool = embedding.pool.model_copy(update={"calibration_dir": self.settings.home / "calibration"})
            embedding = embedding.model_copy(update={"pool": pool})
        return EmbeddingPool(embedding)

    @cached_property
    def conn(self) -> Connection:
        conn = connect(database_url(self.settings), connect_timeout=self.settings.database.connect_timeout)
        migrate(
            conn,
            self.embedder.dimension,
            hnsw_m=self.settings.database.hnsw_m,
            hnsw_ef_construction=self.settings.database.hnsw_ef_construction,
        )
        return conn

    @cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(self.conn, self.settings, self.embedder)

    def close(self) -> None:
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
