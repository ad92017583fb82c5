"""``ragline snapshot create|verify|restore`` end to end against the origin store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from flows.runtime import use_services
from ragline.context import Context
from ragline.snapshot_cmd import snapshot as snapshot_group
from tests.support.db import fresh_database
from tests.vectorstore.snapshot.support import Origin, flip_bytes, vector_checksum
from vectorstore.db import connect


def test_cli_create_verify_restore(origin: Origin, pg_server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")

    def invoke(url: str, *args: str) -> Any:
        try:
            return runner.invoke(
                snapshot_group, list(args), obj=Context(), env={"RAGLINE_HOME": home, "RAGLINE_DATABASE_URL": url}
            )
        finally:
            use_services(None)

    dest = str(tmp_path / "cli-snap")
    created = invoke(origin.url, "create", dest)
    assert created.exit_code == 0, created.output
    assert f"snapshot written to {dest}: {origin.manifest.rows('documents')} documents" in created.stdout
    assert "chunks (384-dim)" in created.stdout

    verified = invoke(origin.url, "verify", dest)
    assert verified.exit_code == 0 and f"{dest}: ok:" in verified.stdout

    url = fresh_database(pg_server)
    restored = invoke(url, "restore", dest)
    assert restored.exit_code == 0, restored.output
    assert f"{origin.manifest.rows('chunks')} chunks" in restored.stdout
    conn = connect(url)
    assert vector_checksum(conn) == vector_checksum(origin.services.conn)
    conn.close()

    again = invoke(url, "restore", dest)
    assert again.exit_code == 1
    assert again.stderr.startswith("ragline: error: the database is not empty") and again.stderr.count("\n") == 1

    flip_bytes(Path(dest) / "models.parquet")
    broken = invoke(url, "verify", dest)
    assert broken.exit_code == 1
    assert (
        broken.stderr == f"ragline: error: {dest}/models.parquet is corrupted: its sha256 differs from the manifest's\n"
    )

    exists = invoke(origin.url, "create", dest)
    assert exists.exit_code == 1 and "already holds a snapshot" in exists.stderr
