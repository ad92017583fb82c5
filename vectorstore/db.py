"""Connections: one per process for the pipeline, and a pool for concurrent searches (a server answering
many requests), with pgvector's adapters registered on every connection."""

from __future__ import annotations

from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool


class DatabaseError(RuntimeError):
    """A database that cannot serve ragline (unreachable, no pgvector, wrong dimension)."""


Connection = psycopg.Connection[dict[str, Any]]


def connect(url: str, *, connect_timeout: int = 10) -> Connection:
    try:
        conn = psycopg.connect(url, row_factory=dict_row, connect_timeout=connect_timeout, autocommit=False)
    except psycopg.OperationalError as err:
        raise DatabaseError(f"cannot connect to the database: {first_line(err)}") from err
    return conn


def open_pool(url: str, *, size: int = 4, connect_timeout: int = 10) -> ConnectionPool[Connection]:
    """A pool of up to ``size`` connections, opened with one ready. The schema must exist (migrated)."""
    pool: ConnectionPool[Connection] = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row, "connect_timeout": connect_timeout, "autocommit": False},
        configure=register_pgvector,
        timeout=connect_timeout,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=connect_timeout)
    except psycopg.OperationalError as err:
        pool.close()
        raise DatabaseError(f"cannot connect to the database: {first_line(err)}") from err
    except Exception as err:  # PoolTimeout
        pool.close()
        raise DatabaseError(f"cannot open a connection pool to the database: {first_line(err)}") from err
    return pool


def register_pgvector(conn: Connection) -> None:
    """Register pgvector's adapters; the extension must exist (the migrations create it)."""
    try:
        register_vector(conn)
    except psycopg.ProgrammingError as err:
        raise DatabaseError(f"the pgvector extension is missing: {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
