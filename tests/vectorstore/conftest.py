"""Fixtures of the store tests: a connection to a fresh, migrated database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vectorstore.db import Connection, connect
from vectorstore.migrations import migrate


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    c = connect(database_url)
    migrate(c, 384)
    yield c
    c.close()
