"""A new home's Prefect database, already migrated: the local server's first start skips Prefect's migrations.

A local Prefect server on a new ``PREFECT_HOME`` spends most of its first start creating its SQLite database:
~100 Alembic migrations and the registration of Prefect's block types (measured here: 9.1 s to healthy from
nothing, 4.6 s from a migrated database; its import alone is 2.9 s). That start is what a newcomer's first
``ragline ingest`` waits for, so ragline ships the database those migrations produce for the Prefect version
it pins (``templates/prefect-<version>.sqlite.gz``, 66 KiB: the schema, Alembic's revision and the block
types, nothing of any run), and copies it into a home that has no database yet (from it: 3.4 s to healthy, and
2.8 s when the start also skips registering block types the database already holds).

It is used only where it is exactly what Prefect itself would create: the installed Prefect is the version it
was made with (another version migrates from nothing as before), and Prefect uses its default SQLite database
under ``PREFECT_HOME`` (a database configured in any of the places Prefect reads settings from is left alone,
``_default_database``). Registering the block types again at that first start is skipped only when no Prefect
collection is installed (``blocks_complete``): the template holds exactly the block types of that Prefect; a
collection's are registered as usual. A damaged template is logged and skipped: it is only ever a speed-up.

``python -m flows.prefect_template`` remakes the template for the installed Prefect from a real server's first
start (the tests check that the shipped one is at the installed Prefect's head revision).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import zlib
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
DATABASE = "prefect.db"
DATABASE_SETTINGS = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_")
"""Prefixes of Prefect's database settings (a URL, a driver, a host, a file name...): with any set, the server
may use another database than the default file, and nothing is seeded."""


def prefect_version() -> str | None:
    try:
        return metadata.version("prefect")
    except metadata.PackageNotFoundError:
        return None


def template_path(version: str, directory: Path = TEMPLATES) -> Path:
    """The database (gzip) made with Prefect ``version``."""
    return directory / f"prefect-{version}.sqlite.gz"


def blocks_complete() -> bool:
    """Whether a seeded database holds every block type Prefect would register: no collection (plugin
    package, ``prefect.collections`` entry point) adds any."""
    return not metadata.entry_points(group="prefect.collections")


def seed(prefect_home: Path, directory: Path = TEMPLATES) -> bool:
    """Copy the migrated database into ``prefect_home`` if it has none and the template fits; True if copied.

    Call it before the server starts, under the lock that starts it: the file appears whole (renamed into
    place) or not at all, so a start interrupted here migrates from nothing next time, as Prefect would."""
    if not _default_database(Path.cwd()):
        return False
    version = prefect_version()
    if version is None:
        return False
    database = template_path(version, directory)
    target = prefect_home / DATABASE
    if not database.is_file() or target.exists():
        return False
    prefect_home.mkdir(parents=True, exist_ok=True)
    for journal in ("-wal", "-shm", "-journal"):
        # Left by a database removed since: SQLite would replay a write-ahead log into the new file.
        (prefect_home / (DATABASE + journal)).unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile(dir=prefect_home, prefix=".prefect-db-", delete=False) as out:
        try:
            with gzip.open(database, "rb") as src:
                shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.replace(out.name, target)
        except (OSError, EOFError, zlib.error) as err:
            # Only ever a speed-up: a damaged template (a broken install) leaves Prefect to migrate as usual.
            Path(out.name).unlink(missing_ok=True)
            log.warning(
                "the Prefect database template %s is unusable (%s): Prefect migrates from nothing", database, err
            )
            return False
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    return True


def _default_database(cwd: Path) -> bool:
    """Whether the server will use Prefect's default SQLite file under ``PREFECT_HOME``, as far as can be told
    without importing Prefect: no database setting in the environment, no profiles file named, and none of the
    files Prefect reads settings from in the working directory (``.env`` with Prefect settings, ``prefect.toml``,
    ``[tool.prefect]`` in ``pyproject.toml``). In doubt it says no: the start is then only slower."""
    if os.environ.get("PREFECT_PROFILES_PATH") or any(k.startswith(DATABASE_SETTINGS) for k in os.environ):
        return False
    if (cwd / "prefect.toml").exists():
        return False
    for name, marker in ((".env", "PREFECT_"), ("pyproject.toml", "[tool.prefect")):
        try:
            if marker in (cwd / name).read_text(errors="replace"):
                return False
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


def build(directory: Path = TEMPLATES, timeout: float = 180.0) -> Path:
    """Start a real Prefect server on an empty home, stop it once healthy, and keep what its start made."""
    from flows.prefect_server import _free_port, _wait_healthy  # that module seeds from this one

    version = prefect_version()
    if version is None:
        raise RuntimeError("prefect is not installed")
    database = template_path(version, directory)
    with tempfile.TemporaryDirectory(prefix="prefect-template-") as tmp:
        home = Path(tmp)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(port),
        )
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        with (home / "server.log").open("wb") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_healthy(
                    lambda: server.poll() is None, f"http://127.0.0.1:{port}/api", timeout, home / "server.log"
                )
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
        directory.mkdir(parents=True, exist_ok=True)
        compact = home / "compact.db"
        with sqlite3.connect(home / DATABASE) as conn:
            conn.execute("VACUUM INTO ?", (str(compact),))  # the WAL folded in, free pages dropped
        conn.close()
        with (
            compact.open("rb") as src,
            database.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as dst,
        ):
            shutil.copyfileobj(src, dst)  # the same bytes for the same database
    for stale in directory.glob("prefect-*"):
        if stale != database:
            stale.unlink()
    return database


if __name__ == "__main__":
    made = build()
    print(f"{made} ({made.stat().st_size} bytes)")
