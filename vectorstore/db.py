"""Connections. Two kinds, each made here alone: the pipeline's own connection (``connect``: its document
claims are session advisory locks, which a pooled connection shared between runs must not carry), and one
pool per process (``open_pool``) for everything else: searches, background writers, the warm service's
workers. The pool checks a connection before lending it, reconnects with backoff when the server restarts,
registers pgvector on every connection, and drops any session lock a borrower left behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout


class DatabaseError(RuntimeError):
    """A database that cannot serve ragline (unreachable, no pgvector, wrong dimension)."""


Connection = psycopg.Connection[dict[str, Any]]


def connect(url: str, *, connect_timeout: int = 10) -> Connection:
    try:
        conn = psycopg.connect(url, row_factory=dict_row, connect_timeout=connect_timeout, autocommit=False)
    except psycopg.OperationalError as err:
        raise DatabaseError(f"cannot connect to the database: {first_line(err)}") from err
    return conn


def open_pool(
    url: str,
    *,
    size: int = 4,
    connect_timeout: int = 10,
    name: str = "ragline",
    on_connect: Callable[[Connection], None] | None = None,
) -> ConnectionPool[Connection]:
    """A pool of up to ``size`` connections, opened with one ready. The schema must exist (migrated).
    ``on_connect`` runs once on each new connection, after pgvector's adapters are registered."""

    def configure(conn: Connection) -> None:
        register_pgvector(conn)
        if on_connect is not None:
            on_connect(conn)
        conn.commit()  # configure must leave the connection idle

    pool: ConnectionPool[Connection] = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row, "connect_timeout": connect_timeout, "autocommit": False},
        configure=configure,
        reset=_reset,
        check=ConnectionPool.check_connection,
        timeout=connect_timeout,
        name=name,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=connect_timeout)
    except psycopg.OperationalError as err:
        pool.close()
        raise DatabaseError(f"cannot connect to the database: {first_line(err)}") from err
    except PoolTimeout as err:
        pool.close()
        raise DatabaseError(f"cannot open a connection pool to the database: {first_line(err)}") from err
    return pool


def _reset(conn: Connection) -> None:
    """A connection back in the pool carries no session state: no advisory lock, no open transaction."""
    conn.rollback()
    conn.execute("SELECT pg_advisory_unlock_all()")
    conn.commit()


def register_pgvector(conn: Connection) -> None:
    """Register pgvector's adapters; the extension must exist (the migrations create it)."""
    try:
        register_vector(conn)
    except psycopg.ProgrammingError as err:
        raise DatabaseError(f"the pgvector extension is missing: {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
