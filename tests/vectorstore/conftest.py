"""Fixtures of the store tests: a connection to the test's database, migrated (a clone of the template)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.db import migrated_database
from vectorstore.db import Connection, connect, register_pgvector


@pytest.fixture
def database_url(pg_server: str, template_database: str) -> str:
    """The database ``conn`` is connected to: a clone of the migrated template."""
    return migrated_database(pg_server, template_database)


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    c = connect(database_url)
    register_pgvector(c)
    yield c
    c.close()
