"""Run records: what each ingestion run did, for ``ragline status`` and operators."""

from __future__ import annotations

import os
import socket
import uuid
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb

from vectorstore.db import Connection


class RunStatus(StrEnum):
    """The ``runs.status`` values (the table's CHECK constraint, migration 1, lists the same)."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_QUARANTINE = "completed_with_quarantine"
    """Every document was handled, some by quarantining it: not a clean success."""
    FAILED = "failed"
    ABANDONED = "abandoned"
    """Left running by a process that died (seen by the next run of its source on the same host)."""


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandon_dead(conn: Connection, source_id: int) -> list[uuid.UUID]:
    """Mark this source's runs left 'running' by a process of this host that is gone (killed) as
    'abandoned', so status never shows a dead run as in progress; returns the leases they held, for the
    caller to release. Runs of other hosts are left alone: a pid says nothing about another machine."""
    here = socket.gethostname()
    with conn.transaction():
        stale = conn.execute(
            "SELECT id, pid, host, lease_id FROM runs WHERE source_id = %s AND status = %s FOR UPDATE",
            (source_id, RunStatus.RUNNING),
        ).fetchall()
        dead = [r for r in stale if r["host"] in (None, here) and (r["pid"] is None or not pid_alive(int(r["pid"])))]
        if dead:
            ids = [r["id"] for r in dead]
            conn.execute(
                "UPDATE runs SET status = %s, finished_at = now() WHERE id = ANY(%s)", (RunStatus.ABANDONED, ids)
            )
    return [r["lease_id"] for r in dead if r["lease_id"] is not None]


def start_run(
    conn: Connection,
    source_id: int,
    flow_run_id: str | None = None,
    lease_id: uuid.UUID | None = None,
    trace_id: str | None = None,
) -> int:
    """Open a run (dead runs of the source are abandoned first); ``trace_id``: its OpenTelemetry trace, when
    traced."""
    abandon_dead(conn, source_id)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO runs (source_id, flow_run_id, pid, host, lease_id, status, trace_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (source_id, flow_run_id, os.getpid(), socket.gethostname(), lease_id, RunStatus.RUNNING, trace_id),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def finish_run(
    conn: Connection,
    run_id: int,
    status: RunStatus,
    counts: dict[str, Any],
    error: str | None = None,
    figures: dict[str, Any] | None = None,
) -> None:
    """Close a run with its counts and ``figures`` (phase times, throughput, batches: ``flows.watch``)."""
    with conn.transaction():
        conn.execute(
            "UPDATE runs SET status = %s, counts = %s, error = %s, figures = %s, finished_at = now() WHERE id = %s",
            (status, Jsonb(counts), error, None if figures is None else Jsonb(figures), run_id),
        )
