"""What create and restore both read from the database: the stored columns of a table and the HNSW indexes on
chunks, from the catalogue; and the idle connection both need (each runs its own transactions)."""

from __future__ import annotations

from typing import Any

from psycopg.pq import TransactionStatus

from vectorstore.db import Connection
from vectorstore.snapshot.format import Column, SnapshotError


def require_idle(conn: Connection) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise SnapshotError("the connection is inside a transaction: commit or roll back before a snapshot")


def table_columns(conn: Connection, table: str) -> list[Column]:
    """Stored (not generated, not dropped) columns of ``table``, in table order."""
    rows = conn.execute(
        """
        SELECT a.attname AS name, t.typname AS type, a.atttypmod AS typmod
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attnum
        """,
        (table,),
    ).fetchall()
    return [
        Column(r["name"], r["type"], r["typmod"] if r["type"] == "vector" and r["typmod"] > 0 else None) for r in rows
    ]


def hnsw_indexes(conn: Connection) -> list[dict[str, Any]]:
    """HNSW indexes on chunks, found by access method (a generation's index is on an expression, so it names no
    column): name, validity, operator class, options and the catalogue's definition."""
    rows = conn.execute(
        """
        SELECT c.relname AS name, x.indisvalid AS valid, oc.opcname AS opclass, c.reloptions AS options,
               pg_get_indexdef(x.indexrelid) AS definition
        FROM pg_index x
        JOIN pg_class c ON c.oid = x.indexrelid
        JOIN pg_am am ON am.oid = c.relam
        JOIN pg_opclass oc ON oc.oid = x.indclass[0]
        WHERE x.indrelid = to_regclass('chunks') AND am.amname = 'hnsw'
        ORDER BY c.relname
        """
    ).fetchall()
    indexes = []
    for r in rows:
        options: dict[str, Any] = {}
        for item in r["options"] or []:
            key, _, value = str(item).partition("=")
            options[key] = int(value) if value.isdigit() else value
        indexes.append({**r, "options": options})
    return indexes
