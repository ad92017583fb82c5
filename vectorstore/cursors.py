"""Checkpointed source cursors: saved after each batch is committed, so a crashed run resumes after the
last committed record instead of from the start."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from vectorstore.db import Connection


def load_cursor(conn: Connection, source_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT cursor FROM sources WHERE id = %s", (source_id,)).fetchone()
    conn.commit()
    return dict(row["cursor"]) if row and row["cursor"] is not None else None


def save_cursor(conn: Connection, source_id: int, cursor: dict[str, Any] | None) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE sources SET cursor = %s, updated_at = now() WHERE id = %s",
            (Jsonb(cursor) if cursor is not None else None, source_id),
        )
