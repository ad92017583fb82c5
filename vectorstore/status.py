"""The store's numbers for ``ragline status``: documents, chunks, quarantine, cursors, last runs, generations."""

from __future__ import annotations

from typing import Any

from vectorstore import generations
from vectorstore.db import Connection


def status(conn: Connection) -> dict[str, Any]:
    """Counts for ``ragline status``: totals and, per source, documents, chunks, cursor and last run."""
    totals = conn.execute(
        """
        SELECT
            (SELECT count(*) FROM documents WHERE status <> 'deleted') AS documents,
            (SELECT count(*) FROM chunks) AS chunks,
            (SELECT count(*) FROM documents WHERE status = 'quarantined') AS quarantined
        """
    ).fetchone()
    assert totals is not None
    sources = conn.execute(
        """
        SELECT s.name, s.kind, s.cursor,
            (SELECT count(*) FROM documents d WHERE d.source_id = s.id AND d.status <> 'deleted') AS documents,
            (SELECT count(*) FROM documents d WHERE d.source_id = s.id AND d.status = 'quarantined')
                AS quarantined,
            (SELECT coalesce(sum(d.chunk_count), 0) FROM documents d WHERE d.source_id = s.id) AS chunks,
            (SELECT json_build_object('id', r.id, 'status', r.status, 'started_at', r.started_at,
                                      'finished_at', r.finished_at, 'counts', r.counts, 'error', r.error,
                                      'trace_id', r.trace_id)
             FROM runs r WHERE r.source_id = s.id ORDER BY r.started_at DESC, r.id DESC LIMIT 1) AS last_run
        FROM sources s ORDER BY s.name
        """
    ).fetchall()
    gens = generations.overview(conn)
    conn.commit()
    return {
        "documents": int(totals["documents"]),
        "chunks": int(totals["chunks"]),
        "quarantined": int(totals["quarantined"]),
        "sources": {
            s["name"]: {
                "kind": s["kind"],
                "documents": int(s["documents"]),
                "chunks": int(s["chunks"]),
                "quarantined": int(s["quarantined"]),
                "cursor": s["cursor"],
                "last_run": s["last_run"],
            }
            for s in sources
        },
        "models": [
            {k: g[k] for k in ("name", "revision", "dim", "normalized", "chunks", "state")} for g in gens if g["chunks"]
        ],
        "generations": [
            {**{k: v for k, v in g.items() if k != "state_changed_at"}, "since": g["state_changed_at"].isoformat()}
            for g in gens
        ],
    }
