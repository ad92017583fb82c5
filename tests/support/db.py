"""Database helpers shared by tests: a fresh database on the session's embedded server, ledger counts."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from flows.runtime import Services


def fresh_database(pg_server: str) -> str:
    """URL of a new, empty database on the server whose admin URL is ``pg_server``."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(pg_server, dbname=name)


def committed_documents(svc: Services) -> int:
    row = svc.conn.execute("SELECT count(*) AS n FROM documents WHERE status = 'committed'").fetchone()
    svc.conn.commit()
    assert row is not None
    return int(row["n"])
