"""What ``ragline status`` and ``ragline quarantine list`` print, built once for the CLI and the warm service
alike, so that both answer with the same JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vectorstore import ledger
from vectorstore.db import Connection
from vectorstore.status import status as store_status


def status_report(conn: Connection, home: Path) -> dict[str, Any]:
    """The store's numbers per source and generation, and where the Prefect UI is."""
    from flows.prefect_server import running_server

    data = store_status(conn)
    server = running_server(home)
    data["prefect_ui"] = server[1].removesuffix("/api") if server else os.environ.get("PREFECT_API_URL")
    return data


def quarantine_report(conn: Connection) -> list[dict[str, Any]]:
    """Documents that could not be ingested, and why."""
    return ledger.quarantined(conn)
