"""Shared fixtures: a real embedded Postgres + pgvector (one server per session, one fresh database per
test), the real model (loaded once per session), and generated PDFs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from embedding.model import Embedder, EmbeddingSettings
from flows.runtime import Services
from flows.settings import RaglineSettings, load_settings
from tests.support.db import fresh_database
from tests.support.embedders import CountingEmbedder
from vectorstore.embedded import embedded_url, stop_embedded


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the admin database of a session-wide embedded server. A failure to start is a test failure."""
    home = tmp_path_factory.mktemp("pg")
    url = embedded_url(home)
    yield url
    stop_embedded(home)


@pytest.fixture
def database_url(pg_server: str) -> str:
    return fresh_database(pg_server)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2 model, loaded once."""
    model = Embedder(EmbeddingSettings())
    model.embed(["warm up"])
    return model


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
