"""The migrated Prefect database a new home's local server starts from (``flows.prefect_template``): copied
only into a home without a database, only for the Prefect version it was made with and only for Prefect's
default SQLite database; the shipped one is at the installed Prefect's head revision, and a real server
started from it serves Prefect's block types."""

from __future__ import annotations

import gzip
import os
import sqlite3
from pathlib import Path

import httpx
import prefect.server.database
import pytest
from alembic.script import ScriptDirectory

from flows import prefect_template
from flows.prefect_server import start_local_server, stop_local_server
from flows.settings import PrefectSettings


def _revision(database: Path) -> str:
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    conn.close()
    return str(row[0])


def test_the_shipped_template_is_at_the_installed_prefects_head(tmp_path: Path) -> None:
    version = prefect_template.prefect_version()
    assert version is not None
    shipped = prefect_template.template_path(version)
    assert shipped.is_file(), f"no template for Prefect {version}: run `python -m flows.prefect_template`"
    migrations = Path(prefect.server.database.__file__).parent / "_migrations"
    heads = ScriptDirectory(str(migrations), version_locations=[str(migrations / "versions" / "sqlite")]).get_heads()
    database = tmp_path / "prefect.db"
    database.write_bytes(gzip.decompress(shipped.read_bytes()))
    assert [_revision(database)] == heads, "the template is stale: run `python -m flows.prefect_template`"
    with sqlite3.connect(database) as conn:
        runs = conn.execute("SELECT count(*) FROM flow_run").fetchone()[0]
        block_types = conn.execute("SELECT count(*) FROM block_type").fetchone()[0]
    conn.close()
    assert runs == 0 and block_types > 0  # Prefect's block types, nothing of any run


def test_seeded_only_into_a_home_without_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith(prefect_template.DATABASE_SETTINGS)]:
        monkeypatch.delenv(name)
    home = tmp_path / "prefect"
    home.mkdir()
    (home / "prefect.db-wal").write_bytes(b"the log of a database removed since")
    assert prefect_template.seed(home)
    assert _revision(home / "prefect.db")
    assert [p.name for p in home.iterdir()] == ["prefect.db"]  # renamed into place, no temporary left

    (home / "prefect.db").write_bytes(b"a database of the operator's")
    assert not prefect_template.seed(home)
    assert (home / "prefect.db").read_bytes() == b"a database of the operator's"


@pytest.mark.parametrize(
    ("variable", "file", "text"),
    [
        ("PREFECT_API_DATABASE_CONNECTION_URL", None, "postgresql+asyncpg://prefect@127.0.0.1/prefect"),
        ("PREFECT_SERVER_DATABASE_NAME", None, "/srv/prefect/other.db"),
        ("PREFECT_PROFILES_PATH", None, "/etc/prefect/profiles.toml"),
        (None, ".env", "PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg\n"),
        (None, "prefect.toml", "[server.database]\n"),
        (None, "pyproject.toml", "[tool.prefect.server.database]\nname = 'x.db'\n"),
    ],
)
def test_not_seeded_where_prefect_may_use_another_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str | None, file: str | None, text: str
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in [k for k in os.environ if k.startswith(("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    (cwd / "pyproject.toml").write_text("[project]\nname = 'someone-elses'\n")
    (cwd / ".env").write_text("OTHER_APP_TOKEN=1\n")
    assert prefect_template.seed(tmp_path / "plain")  # files without Prefect settings do not count
    if variable:
        monkeypatch.setenv(variable, text)
    if file:
        (cwd / file).write_text(text)
    assert not prefect_template.seed(tmp_path / "configured")
    assert not (tmp_path / "configured" / "prefect.db").exists()


def test_a_damaged_template_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = prefect_template.prefect_version()
    assert version is not None
    templates = tmp_path / "templates"
    templates.mkdir()
    prefect_template.template_path(version, templates).write_bytes(gzip.compress(b"SQLite format 3")[:-9])
    home = tmp_path / "prefect"
    assert not prefect_template.seed(home, templates)
    assert list(home.iterdir()) == []  # no database, no temporary: Prefect migrates from nothing
    assert "unusable" in caplog.text


def test_not_seeded_for_another_prefect(tmp_path: Path) -> None:

    other = tmp_path / "templates"
    other.mkdir()
    (other / "prefect-0.0.1.sqlite.gz").write_bytes(gzip.compress(b"not this Prefect's"))
    assert not prefect_template.seed(tmp_path / "other", other)
    assert not (tmp_path / "other" / "prefect.db").exists()


def test_a_server_started_on_a_new_home_serves_from_the_template(tmp_path: Path) -> None:
    server = start_local_server(tmp_path, PrefectSettings(startup_timeout=120))
    try:
        # Seeded before the server process started (its import alone takes seconds): the database is there.
        assert (tmp_path / "prefect" / "prefect.db").is_file()
        url = server.wait()
        response = httpx.post(f"{url}/block_types/filter", json={}, timeout=10)
        response.raise_for_status()
        slugs = {b["slug"] for b in response.json()}
        assert "secret" in slugs and len(slugs) > 10
        log = (tmp_path / "prefect" / "server.log").read_text()
        assert "Error" not in log, log
    finally:
        stop_local_server(tmp_path)
