"""Shared fixtures: a real embedded Postgres + pgvector (one server per session, one fresh database per
test), the real model (loaded once per session), and generated PDFs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from embedding.model import Embedder, EmbeddingSettings
from flows.runtime import Services
from flows.settings import RaglineSettings, load_settings
from vectorstore.embedded import embedded_url, stop_embedded


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the admin database of a session-wide embedded server. A failure to start is a test failure."""
    home = tmp_path_factory.mktemp("pg")
    url = embedded_url(home)
    yield url
    stop_embedded(home)


def fresh_database(pg_server: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(pg_server, dbname=name)


@pytest.fixture
def database_url(pg_server: str) -> str:
    return fresh_database(pg_server)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2 model, loaded once."""
    model = Embedder(EmbeddingSettings())
    model.embed(["warm up"])
    return model


class CountingEmbedder(Embedder):
    """The real embedder, counting the texts it is asked to embed (a seam, not a fake)."""

    def __init__(self, inner: Embedder) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        return super().embed(texts, token_counts=token_counts)


@pytest.fixture
def counting_embedder(embedder: Embedder) -> CountingEmbedder:
    return CountingEmbedder(embedder)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> RaglineSettings:
    return load_settings({"RAGLINE_HOME": str(tmp_path / "home"), "RAGLINE_DATABASE_URL": database_url})


@pytest.fixture
def services(settings: RaglineSettings, counting_embedder: CountingEmbedder) -> Iterator[Services]:
    svc = Services(settings, shared_embedder=counting_embedder)
    yield svc
    svc.close()


def committed_documents(svc: Services) -> int:
    row = svc.conn.execute("SELECT count(*) AS n FROM documents WHERE status = 'committed'").fetchone()
    svc.conn.commit()
    assert row is not None
    return int(row["n"])
