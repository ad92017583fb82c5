"""One local Prefect server for the whole test session, started by ragline's own code (flows.prefect_server)
the first time a test asks for it: CLI subprocesses reach it through a RAGLINE_HOME whose ``prefect/`` is the
server's (ragline reuses a running local server, as it does for users), in-process flows through Prefect's
settings context. A server that cannot start raises: the asking test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from flows.prefect_server import ensure_local_server, stop_local_server
from flows.settings import PrefectSettings


@dataclass(frozen=True)
class PrefectServer:
    home: Path
    """The RAGLINE_HOME that owns the server (its ``prefect/`` holds server.json, the log and the SQLite db)."""
    api_url: str

    @property
    def base(self) -> str:
        """Base URL of the UI (and of ``/api``)."""
        return self.api_url.removesuffix("/api")

    def ragline_home(self, home: Path) -> Path:
        """A RAGLINE_HOME of its own for a ragline process, sharing this server: its ``prefect`` folder is a
        link to the server's, so ragline finds the server running and reuses it."""
        home.mkdir(parents=True, exist_ok=True)
        (home / "prefect").symlink_to(self.home / "prefect", target_is_directory=True)
        return home


def start_server(home: Path) -> PrefectServer:
    """Start the server on a free port (not 4200) and check that its UI knows that port."""
    url = ensure_local_server(home, PrefectSettings(startup_timeout=120))
    server = PrefectServer(home, url)
    try:
        ui_api = httpx.get(f"{server.base}/ui-settings", timeout=10).json()["api_url"]
        assert ui_api == url, f"the Prefect UI calls {ui_api}, not {url}"
    except BaseException:
        stop_local_server(home)
        raise
    return server


def stop_server(server: PrefectServer) -> None:
    stop_local_server(server.home)


@contextmanager
def pointed_at(server: PrefectServer) -> Iterator[None]:
    """Point this process's Prefect client at the server. Prefect reads its environment once, when first
    imported (another test may have imported it already): the URL goes into its settings context, and into
    the environment too for code that asks ``flows.prefect_server.configure``."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                # the runs' logs go now, while the server is up (not at exit, after the session stopped it)
                APILogHandler().flush()
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
