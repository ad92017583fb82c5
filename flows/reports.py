"""What ``ragline status`` and ``ragline quarantine list`` print, built once for the CLI and the warm service
alike, so that both answer with the same JSON."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from flows.settings import RaglineSettings
from vectorstore import baselines, ledger
from vectorstore.db import Connection
from vectorstore.status import status as store_status


def status_report(conn: Connection, settings: RaglineSettings) -> dict[str, Any]:
    """The store's numbers per source and generation, each source's embedding drift and each generation's
    model canary, the embedding backend each device chose (with the int8 gate figures that decided it) and
    where the Prefect UI is."""
    from embedding.backend_status import backend_status
    from flows.prefect_server import running_server

    data = store_status(conn)
    _add_drift(conn, data)
    data["embedding"] = [
        {**b.to_json(), "summary": b.describe()} for b in backend_status(settings.embedding, settings.home)
    ]
    server = running_server(settings.home)
    data["prefect_ui"] = server[1].removesuffix("/api") if server else os.environ.get("PREFECT_API_URL")
    return data


def _add_drift(conn: Connection, data: dict[str, Any]) -> None:
    """Per source ``drift``: its tenant, its baseline and its latest measured run's drift with a one-line
    ``summary`` (``insufficient`` runs say so: a run too small to judge raised no alarm); and ``canary``: each
    generation's last canary check (``status`` ``mismatch``: writes into it are stopped)."""
    from flows.artifacts import drift_line

    for name, drift in baselines.overview(conn).items():
        latest = drift["latest"]
        if latest is not None:
            summary = drift_line(latest)
        elif drift["baseline"] is not None:
            summary = "baseline anchored; no run measured since"
        else:
            summary = "no baseline yet"
        entry = data["sources"].get(name)
        if entry is not None:
            entry["drift"] = {**drift, "summary": summary}
    data["canary"] = [
        {
            **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in c.items()},
            "model": f"{c['name']}@{c['revision']}",
            "writes_stopped": c["status"] == "mismatch",
        }
        for c in baselines.canary_states(conn)
    ]


def quarantine_report(conn: Connection) -> list[dict[str, Any]]:
    """Documents that could not be ingested, and why."""
    return ledger.quarantined(conn)
