"""How ragline runs Prefect without paying for a server in every command.

Prefect's ephemeral mode starts an API server inside each process (7-15 s here). Instead ragline starts one
local Prefect server under RAGLINE_HOME the first time a flow runs, detached in its own session, and every
later command reuses it, like the embedded Postgres; it also serves the Prefect UI. ``PREFECT_API_URL`` in
the environment means the operator runs their own server: ragline then leaves Prefect alone.

This module must be used before ``prefect`` is imported: Prefect reads its settings at import.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from flows import prefect_template
from flows.settings import PrefectSettings
from vectorstore.runs import pid_alive


class PrefectServerError(RuntimeError):
    pass


def _base_env(home: Path) -> None:
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # The CLI reports failures in one line: Prefect's console output is silenced, while its logs still go to
    # the API, so the full story (tracebacks included) is in the Prefect UI.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    # Log shipping and event batching would add seconds at exit on a busy 2-core machine.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")


def configure(home: Path, settings: PrefectSettings) -> str | None:
    """Point Prefect at a server; returns its API URL (None for ephemeral mode)."""
    pending = configure_pending(home, settings)
    return pending.wait() if pending else None


def configure_pending(home: Path, settings: PrefectSettings) -> PendingServer | None:
    """Like ``configure``, without waiting for a server this call started to answer: ``PREFECT_API_URL`` is
    set at once, so Prefect can be imported while its server starts; ``wait()`` before talking to it."""
    _base_env(home)
    if os.environ.get("PREFECT_API_URL"):
        return PendingServer(os.environ["PREFECT_API_URL"], None)
    if settings.mode == "ephemeral":
        return None
    pending = start_local_server(home, settings)
    os.environ["PREFECT_API_URL"] = pending.url
    return pending


def _state_file(home: Path) -> Path:
    return home / "prefect" / "server.json"


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    """True if ``pid`` runs a Prefect server (a pid recorded before a reboot may now be another program)."""
    if not pid_alive(pid):
        return False
    try:
        return b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(home: Path) -> tuple[int, str] | None:
    try:
        state = json.loads(_state_file(home).read_text())
        return int(state["pid"]), str(state["url"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def running_server(home: Path) -> tuple[int, str] | None:
    """(pid, API URL) of the local server if it is up."""
    state = _read_state(home)
    if state and _alive(state[0]) and _healthy(state[1]):
        return state
    return None


def _wait_healthy(running: Callable[[], bool], url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running():
            raise PrefectServerError(f"the local Prefect server exited; see {log_path}")
        if _healthy(url, timeout=1.0):
            return
        time.sleep(0.25)
    raise PrefectServerError(f"the local Prefect server did not answer within {timeout:.0f} s; see {log_path}")


class PendingServer:
    """A server's URL, and how to wait until it answers."""

    def __init__(self, url: str, waiter: Callable[[], None] | None) -> None:
        self.url = url
        self._waiter = waiter

    def wait(self) -> str:
        if self._waiter is not None:
            self._waiter()
            self._waiter = None
        return self.url


def ensure_local_server(home: Path, settings: PrefectSettings) -> str:
    """Return the URL of the local Prefect server, starting it if needed and waiting until it answers."""
    return start_local_server(home, settings).wait()


def start_local_server(home: Path, settings: PrefectSettings) -> PendingServer:
    """The local Prefect server, started if needed (once, under a file lock), not yet waited for.

    Its pid and URL are recorded before it answers, so a command killed while the server starts does not
    make the next command start a second server on the same database: that one waits for the first. A new
    home's database is seeded from the migrated template (``prefect_template``) before the server starts.
    """
    log_path = home / "prefect" / "server.log"
    with _locked(home / "prefect" / "server.lock"):
        state = _read_state(home)
        if state and _alive(state[0]):
            pid, url = state
            return PendingServer(
                url, lambda: _wait_healthy(lambda: _alive(pid), url, settings.startup_timeout, log_path)
            )
        port = settings.port or _free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The UI asks /ui-settings where the API is: without these it says port 4200 whatever --port was.
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
        }
        env.pop("PREFECT_API_URL", None)
        if prefect_template.seed(Path(env["PREFECT_HOME"])) and prefect_template.blocks_complete():
            env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"  # the seeded database holds them all
        with log_path.open("ab") as log_fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # survives the CLI and a kill of its process group
            )
        _state_file(home).write_text(json.dumps({"pid": proc.pid, "url": url}))

    def wait() -> None:
        try:
            # Our own child: poll it (its /proc cmdline is ragline's until it execs).
            _wait_healthy(lambda: proc.poll() is None, url, settings.startup_timeout, log_path)
        except PrefectServerError:
            with _locked(home / "prefect" / "server.lock"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                if _read_state(home) == (proc.pid, url):
                    _state_file(home).unlink(missing_ok=True)
            raise

    return PendingServer(url, wait)


def stop_local_server(home: Path) -> bool:
    state = _read_state(home)
    if state is None:
        return False
    pid = state[0]
    _state_file(home).unlink(missing_ok=True)
    if not _alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    return True
