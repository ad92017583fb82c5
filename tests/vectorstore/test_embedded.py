"""The embedded Postgres: started once per RAGLINE_HOME, reused, and recovered from an interrupted initdb."""

from __future__ import annotations

from pathlib import Path

import psycopg

from vectorstore.embedded import embedded_url, stop_embedded


def test_started_once_reused_and_recovered_after_an_interrupted_first_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    pgdata = broken / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("18\n")  # what a kill during initdb leaves behind
    (pgdata / "postmaster.pid").write_text("-12404\n")
    try:
        url = embedded_url(broken)
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        assert (broken / "pgdata.ready").is_file()

        again = embedded_url(broken)  # reused: the data is still there
        with psycopg.connect(again) as conn:
            row = conn.execute("SELECT x FROM kept").fetchone()
        assert row == (42,)
    finally:
        assert stop_embedded(broken)


def test_stop_refuses_a_negative_pid(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "postmaster.pid").write_text("-1\n")
    assert stop_embedded(tmp_path) is False
