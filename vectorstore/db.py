"""Connections. Two kinds, each made here alone: the pipeline's own connection (``connect``: its document
claims are session advisory locks, which a pooled connection shared between runs must not carry), and one
pool per process (``open_pool``) for everything else: searches, background writers, the warm service's
workers. The pool checks a connection before lending it, reconnects with backoff when the server restarts,
registers pgvector on every connection, and drops any session lock a borrower left behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import tenacity
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


def disconnected(conn: Connection, err: BaseException) -> bool:
    """Whether ``err`` means ``conn`` is gone (the server restarted, failed over, or killed it), as opposed
    to a statement that failed on a live connection (a full disk, a constraint): only the first is retried."""
    return isinstance(err, psycopg.OperationalError | psycopg.InterfaceError) and (conn.closed or conn.broken)


def reconnect(
    open_conn: Callable[[], Connection],
    *,
    seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Connection:
    """A new connection from ``open_conn``, tried again with exponential backoff and full jitter for up to
    ``seconds`` (a restarting server refuses connections for a while). Past that, one clear line."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(seconds),
        wait=tenacity.wait_random_exponential(multiplier=0.25, max=5.0),
        retry=tenacity.retry_if_exception_type((DatabaseError, psycopg.OperationalError)),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(open_conn)
    except (DatabaseError, psycopg.OperationalError) as err:
        raise DatabaseError(
            f"lost the database connection and could not reconnect within {seconds:g} s "
            f"(database.reconnect_seconds): {first_line(err)}"
        ) from err


def register_pgvector(conn: Connection) -> None:
    """Register pgvector's adapters; the extension must exist (the migrations create it)."""
    try:
        register_vector(conn)
    except psycopg.ProgrammingError as err:
        raise DatabaseError(f"the pgvector extension is missing: {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
