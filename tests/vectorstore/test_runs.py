"""Run records: dead runs of this host are abandoned and hand back their leases; other hosts' are not."""

from __future__ import annotations

import socket
import uuid

from flows.runtime import Services
from vectorstore import ledger, runs


def test_dead_local_runs_are_abandoned_and_return_their_leases(services: Services) -> None:
    conn = services.conn
    source_id = ledger.ensure_source(conn, "crm", "hubspot")
    dead_lease, remote_lease = uuid.uuid4(), uuid.uuid4()
    with conn.transaction():
        for host, lease in ((socket.gethostname(), dead_lease), ("another-machine", remote_lease)):
            conn.execute(
                "INSERT INTO runs (source_id, pid, host, lease_id, status) VALUES (%s, 2147483646, %s, %s, 'running')",
                (source_id, host, lease),
            )
    live = runs.start_run(conn, source_id, lease_id=uuid.uuid4())
    assert runs.abandon_dead(conn, source_id) == []  # the first call (inside start_run) took care of it
    rows = conn.execute("SELECT id, host, status FROM runs ORDER BY id").fetchall()
    conn.commit()
    assert [(r["host"], r["status"]) for r in rows] == [
        (socket.gethostname(), "abandoned"),
        ("another-machine", "running"),  # a pid on another host says nothing here
        (socket.gethostname(), "running"),
    ]
    assert rows[-1]["id"] == live


def test_abandon_dead_returns_leases(services: Services) -> None:
    conn = services.conn
    source_id = ledger.ensure_source(conn, "wiki", "mediawiki")
    lease = uuid.uuid4()
    with conn.transaction():
        conn.execute(
            "INSERT INTO runs (source_id, pid, host, lease_id, status) VALUES (%s, 2147483646, %s, %s, 'running')",
            (source_id, socket.gethostname(), lease),
        )
    assert runs.abandon_dead(conn, source_id) == [lease]
