"""Run records: what each ingestion run did, for ``ragline status`` and operators."""

from __future__ import annotations

import os
from typing import Any

from psycopg.types.json import Jsonb

from vectorstore.db import Connection


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_run(conn: Connection, source_id: int, flow_run_id: str | None = None) -> int:
    """Open a run; runs of this source left 'running' by a process that is gone (killed) become
    'abandoned', so status never shows a dead run as in progress."""
    with conn.transaction():
        stale = conn.execute(
            "SELECT id, pid FROM runs WHERE source_id = %s AND status = 'running'", (source_id,)
        ).fetchall()
        dead = [r["id"] for r in stale if r["pid"] is None or not pid_alive(int(r["pid"]))]
        if dead:
            conn.execute("UPDATE runs SET status = 'abandoned', finished_at = now() WHERE id = ANY(%s)", (dead,))
        row = conn.execute(
            "INSERT INTO runs (source_id, flow_run_id, pid, status) VALUES (%s, %s, %s, 'running') RETURNING id",
            (source_id, flow_run_id, os.getpid()),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def finish_run(conn: Connection, run_id: int, status: str, counts: dict[str, Any], error: str | None = None) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE runs SET status = %s, counts = %s, error = %s, finished_at = now() WHERE id = %s",
            (status, Jsonb(counts), error, run_id),
        )
