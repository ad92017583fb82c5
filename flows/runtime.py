"""Process-wide services: one database connection and one warm model per process, opened on first use."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

from embedding.model import Embedder
from flows.pipeline import Pipeline
from flows.settings import RaglineSettings, database_url, load_settings
from vectorstore.db import Connection, connect
from vectorstore.migrations import migrate


@dataclass
class Services:
    settings: RaglineSettings
    shared_embedder: Embedder | None = field(default=None, repr=False)

    @cached_property
    def embedder(self) -> Embedder:
        """Cheap until ``embed`` is called: the model itself loads lazily."""
        return self.shared_embedder or Embedder(self.settings.embedding)

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
        if "conn" in self.__dict__:
            self.conn.close()
            del self.__dict__["conn"]
            self.__dict__.pop("pipeline", None)


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
