"""What ``ragline status`` and ``ragline quarantine list`` print, built once for the CLI and the warm service
alike, so that both answer with the same JSON."""

from __future__ import annotations

import os
from typing import Any

from flows.settings import RaglineSettings
from vectorstore import ledger
from vectorstore.db import Connection
from vectorstore.status import status as store_status


def status_report(conn: Connection, settings: RaglineSettings) -> dict[str, Any]:
    """The store's numbers per source and generation, the embedding backend each device chose (with the int8
    gate figures that decided it) and where the Prefect UI is."""
    from embedding.backend_status import backend_status
    from flows.prefect_server import running_server

    data = store_status(conn)
    data["embedding"] = [
        {**b.to_json(), "summary": b.describe()} for b in backend_status(settings.embedding, settings.home)
    ]
    server = running_server(settings.home)
    data["prefect_ui"] = server[1].removesuffix("/api") if server else os.environ.get("PREFECT_API_URL")
    return data


def quarantine_report(conn: Connection) -> list[dict[str, Any]]:
    """Documents that could not be ingested, and why."""
    return ledger.quarantined(conn)
