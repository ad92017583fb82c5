"""Database helpers shared by tests: databases on the session's embedded server (empty, or cloned from a
template migrated once per session), ledger counts."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from flows.runtime import Services
from vectorstore.db import connect
from vectorstore.migrations import migrate, set_full_text

DIMENSION = 384  # the real model's


def _create(pg_server: str, template: str | None = None) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(statement)
    return name


def _url(pg_server: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(pg_server, dbname=name)


def fresh_database(pg_server: str) -> str:
    """URL of a new, empty database on the server whose admin URL is ``pg_server``."""
    return _url(pg_server, _create(pg_server))


def make_template(pg_server: str) -> str:
    """Name of a new database migrated as ``Services`` leaves a store on the defaults (the real model's
    dimension, full text on), then closed to connections: ``CREATE DATABASE ... TEMPLATE`` needs it idle,
    and a stray connection would make every later clone fail."""
    name = _create(pg_server)
    with connect(_url(pg_server, name)) as conn:
        migrate(conn, DIMENSION)
        set_full_text(conn, True)
        conn.commit()
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    return name


def migrated_database(pg_server: str, template: str) -> str:
    """URL of a new database cloned from ``template`` (a file copy: no migration to run)."""
    return _url(pg_server, _create(pg_server, template))


def committed_documents(svc: Services) -> int:
    row = svc.conn.execute("SELECT count(*) AS n FROM documents WHERE status = 'committed'").fetchone()
    svc.conn.commit()
    assert row is not None
    return int(row["n"])
