"""Fixtures of the store tests: a connection to the test's database, migrated (a clone of the template)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.db import fresh_database, migrated_database
from vectorstore.db import Connection, connect, register_pgvector


@pytest.fixture
def database_url(request: pytest.FixtureRequest, pg_server: str, template_database: str) -> str:
    """The database ``conn`` is connected to (migrated) when the test takes ``conn``; otherwise an empty one,
    as the migration tests of test_store.py expect (they should take ``empty_database_url`` instead; this
    override then goes)."""
    if "conn" in request.fixturenames:
        return migrated_database(pg_server, template_database)
    return fresh_database(pg_server)


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    c = connect(database_url)
    register_pgvector(c)
    yield c
    c.close()
