"""Shared fixtures: a real embedded Postgres + pgvector (one server per session; per test a database cloned
from a template migrated once per session, or an empty one), the real model (loaded once per session), one
local Prefect server per session (started by the first test that needs it), and generated PDFs."""

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
from tests.support.db import fresh_database, make_template, migrated_database
from tests.support.embedders import CountingEmbedder
from tests.support.prefect import PrefectServer, pointed_at, start_server, stop_server
from vectorstore.embedded import embedded_url, stop_embedded


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the admin database of a session-wide embedded server. A failure to start is a test failure."""
    home = tmp_path_factory.mktemp("pg")
    url = embedded_url(home)
    yield url
    stop_embedded(home)


@pytest.fixture(scope="session")
def template_database(pg_server: str) -> str:
    """Name of the database every ``database_url`` is cloned from: migrated once, not ~130 times."""
    return make_template(pg_server)


@pytest.fixture
def database_url(pg_server: str, template_database: str) -> str:
    """A new database of the test's own, already migrated (a clone of the session's template)."""
    return migrated_database(pg_server, template_database)


@pytest.fixture
def empty_database_url(pg_server: str) -> str:
    """A new, empty database: for tests of migrations and of a first start on a brand-new store."""
    return fresh_database(pg_server)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The session's local Prefect server (UI included), started on a free port by the first test that asks.
    It cannot start: that test fails."""
    server = start_server(tmp_path_factory.mktemp("prefect-server-home"))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """This process's Prefect client (flows, limits, artifacts) pointed at the session's server, for one
    test; yields the API URL."""
    with pointed_at(prefect_server):
        yield prefect_server.api_url


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
