"""The ``ragline`` command as users run it: subprocesses, the local Prefect server, the JSON contracts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.db import fresh_database
from tests.support.pdfgen import not_a_pdf, text_pdf
from tests.support.prefect import PrefectServer
from vectorstore.embedded import stop_embedded

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "The lighthouse keeper climbed one hundred and twelve spiral steps every evening to trim the wick, "
    "polish the Fresnel lens and wind the clockwork that turned the beam across the dark water. "
)


@pytest.fixture(scope="module")
def cli_home(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One RAGLINE_HOME for the CLI tests whose local Prefect server is the session's: ragline finds it
    running and reuses it. Anything else ragline started there (an embedded Postgres) is stopped after."""
    home = prefect_server.ragline_home(tmp_path_factory.mktemp("cli") / "home")
    yield home
    stop_embedded(home)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env.update({"RAGLINE_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra})
    return env


def ragline(home: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ragline", *args],
        env=_env(home, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ragline {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def db(empty_database_url: str) -> str:
    """An empty database: ragline's first command migrates it, as for a new user."""
    return empty_database_url


def corpus(root: Path, n: int, pages: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text_pdf(
            root / f"doc{i:03d}.pdf",
            [f"Document {i} page {p + 1}. " + PARAGRAPH * 3 + f"Unique marker zeta{i}x{p + 1}." for p in range(pages)],
        )
    return root


def test_ingest_search_status_follow_the_json_contract(tmp_path: Path, cli_home: Path, db: str) -> None:
    docs = corpus(tmp_path / "docs", 3)
    text_pdf(docs / "special.pdf", ["Nothing here.", "Octopuses have three hearts and blue, copper-based blood."])
    out = ragline(cli_home, "ingest", "pdf", str(docs), RAGLINE_DATABASE_URL=db)
    assert "4 ingested" in out.stdout

    hits = json.loads(
        ragline(
            cli_home,
            "search",
            "how many hearts does an octopus have",
            "-k",
            "3",
            "--json",
            RAGLINE_DATABASE_URL=db,
        ).stdout
    )
    assert isinstance(hits, list) and len(hits) == 3
    for h in hits:
        assert {"score", "text", "source", "uri", "title", "page", "chunk_index"} <= h.keys()
        assert isinstance(h["score"], float) and isinstance(h["page"], int) and h["page"] >= 1
    assert (Path(hits[0]["uri"]).name, hits[0]["page"], hits[0]["source"]) == ("special.pdf", 2, "pdf")
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    status = json.loads(ragline(cli_home, "status", "--json", RAGLINE_DATABASE_URL=db).stdout)
    assert (status["documents"], status["quarantined"]) == (4, 0)
    assert status["chunks"] > 0 and isinstance(status["chunks"], int)
    src = status["sources"]["pdf"]
    assert (src["documents"], src["chunks"]) == (4, status["chunks"])
    assert "cursor" in src and src["last_run"]["status"] == "completed"


def test_second_ingest_of_unchanged_corpus_is_a_no_op(tmp_path: Path, cli_home: Path, db: str) -> None:
    docs = corpus(tmp_path / "docs", 4)
    ragline(cli_home, "ingest", "pdf", str(docs), RAGLINE_DATABASE_URL=db)
    with psycopg.connect(db) as conn:
        before = conn.execute("SELECT id, created_at FROM chunks ORDER BY id").fetchall()
    again = json.loads(ragline(cli_home, "ingest", "pdf", str(docs), "--json", RAGLINE_DATABASE_URL=db).stdout)
    assert (again["unchanged"], again["committed"], again["chunks_written"]) == (4, 0, 0)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT id, created_at FROM chunks ORDER BY id").fetchall() == before


def test_flow_runs_on_the_reused_local_prefect_server(tmp_path: Path, cli_home: Path, db: str) -> None:
    ragline(cli_home, "ingest", "pdf", str(corpus(tmp_path / "a", 1)), RAGLINE_DATABASE_URL=db)
    state = json.loads((cli_home / "prefect" / "server.json").read_text())
    ragline(
        cli_home,
        "ingest",
        "pdf",
        str(corpus(tmp_path / "b", 1)),
        "--source",
        "other",
        RAGLINE_DATABASE_URL=db,
    )
    assert json.loads((cli_home / "prefect" / "server.json").read_text())["pid"] == state["pid"]

    names = {"name": {"any_": ["ingest-pdf-pdf", "ingest-pdf-other"]}}  # the server is the session's
    runs = httpx.post(f"{state['url']}/flow_runs/filter", json={"flow_runs": names, "limit": 50}, timeout=10).json()
    ours = [r for r in runs if r["name"] in ("ingest-pdf-pdf", "ingest-pdf-other")]
    assert {r["name"] for r in ours} == {"ingest-pdf-pdf", "ingest-pdf-other"}
    assert all(r["state_type"] == "COMPLETED" for r in ours)
    of_ours = {"id": {"any_": [r["id"] for r in ours]}}
    tasks = httpx.post(f"{state['url']}/task_runs/filter", json={"flow_runs": of_ours, "limit": 200}, timeout=10).json()
    task_names = {t["name"].rsplit("-", 1)[0] for t in tasks}
    # Planned once: the CLI's plan is handed to the flow, which plans again only when a deployment starts it.
    assert "ingest-pdf-documents" in task_names and "plan-pdf-changes" not in task_names


def test_errors_are_one_clear_line(tmp_path: Path, cli_home: Path, db: str) -> None:
    missing = ragline(cli_home, "ingest", "pdf", str(tmp_path / "nope"), check=False, RAGLINE_DATABASE_URL=db)
    assert missing.returncode != 0
    assert missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr

    config = tmp_path / "ragline.yaml"
    config.write_text(
        "search:\n  ef_search: -3\nembedding:\n  chunking:\n    chunk_tokens: 100\n    overlap_tokens: 60\n"
    )
    bad = ragline(cli_home, "status", check=False, RAGLINE_CONFIG=str(config))
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "search.ef_search" in bad.stderr and "embedding.chunking" in bad.stderr

    config.write_text("embeding: {}\n")
    typo = ragline(cli_home, "status", check=False, RAGLINE_CONFIG=str(config))
    assert typo.returncode != 0 and "embeding" in typo.stderr

    unreachable = ragline(cli_home, "status", check=False, RAGLINE_DATABASE_URL="postgresql://u:hunter2@127.0.0.1:1/x")
    assert unreachable.returncode != 0 and "cannot connect" in unreachable.stderr
    assert "hunter2" not in unreachable.stderr


def test_an_emptied_folder_is_held_until_allow_mass_delete(tmp_path: Path, cli_home: Path, db: str) -> None:
    docs = corpus(tmp_path / "share", 5, pages=1)
    ragline(cli_home, "ingest", "pdf", str(docs), "--source", "share", RAGLINE_DATABASE_URL=db)
    for file in docs.iterdir():  # an unmounted share
        file.unlink()
    held = ragline(cli_home, "ingest", "pdf", str(docs), "--source", "share", check=False, RAGLINE_DATABASE_URL=db)
    assert held.returncode != 0
    assert held.stderr.strip().count("\n") == 0, held.stderr
    assert "'share'" in held.stderr and "5 of its 5" in held.stderr and "--allow-mass-delete" in held.stderr
    with psycopg.connect(db) as conn:
        kept = conn.execute("SELECT count(*) FROM chunks").fetchone()
    assert kept is not None and kept[0] >= 5

    state = json.loads((cli_home / "prefect" / "server.json").read_text())
    names = {"name": {"any_": ["ingest-pdf-share"]}}  # the server is the session's
    runs = httpx.post(f"{state['url']}/flow_runs/filter", json={"flow_runs": names, "limit": 50}, timeout=10).json()
    failed = [r for r in runs if r["name"] == "ingest-pdf-share" and r["state_type"] == "FAILED"]
    assert len(failed) == 1 and "DeletionsHeld" in failed[0]["state"]["message"]

    args = ("ingest", "pdf", str(docs), "--source", "share", "--allow-mass-delete", "--json")
    confirmed = json.loads(ragline(cli_home, *args, RAGLINE_DATABASE_URL=db).stdout)
    assert (confirmed["deleted"], confirmed["deletions_held"]) == (5, 0)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone() == (0,)


def test_quarantine_list_and_retry(tmp_path: Path, cli_home: Path, db: str) -> None:
    docs = corpus(tmp_path / "docs", 1)
    not_a_pdf(docs / "broken.pdf")
    out = ragline(cli_home, "ingest", "pdf", str(docs), RAGLINE_DATABASE_URL=db)
    assert "1 quarantined" in out.stdout and "quarantine list" in out.stderr

    [item] = json.loads(ragline(cli_home, "quarantine", "list", "--json", RAGLINE_DATABASE_URL=db).stdout)
    assert item["reason"] == "not_a_pdf" and Path(item["uri"]).name == "broken.pdf" and item["error"]

    text_pdf(docs / "broken.pdf", ["Repaired: the file now holds a real page about tide pools and anemones."])
    retried = ragline(cli_home, "quarantine", "retry", str(item["id"]), RAGLINE_DATABASE_URL=db)
    assert "1 ingested" in retried.stdout
    assert json.loads(ragline(cli_home, "quarantine", "list", "--json", RAGLINE_DATABASE_URL=db).stdout) == []
    unknown = ragline(cli_home, "quarantine", "retry", "999999", check=False, RAGLINE_DATABASE_URL=db)
    assert unknown.returncode != 0 and "999999" in unknown.stderr


def _state(db: str) -> tuple[int, set[Any], int]:
    with psycopg.connect(db) as conn:
        docs = conn.execute("SELECT count(*) FROM documents WHERE status = 'committed'").fetchone()
        ids = {r[0] for r in conn.execute("SELECT id FROM chunks").fetchall()}
        rows = conn.execute("SELECT count(*) FROM chunks").fetchone()
    assert docs is not None and rows is not None
    return int(docs[0]), ids, int(rows[0])


def _kill_once_committed(home: Path, db: str, args: list[str], docs: int, **env: str) -> None:
    """Run ``ragline ARGS`` and SIGKILL its whole process group once ``docs`` documents are committed
    (0: 1.5 s after start, while it is starting up)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragline", *args],
        env=_env(home, RAGLINE_DATABASE_URL=db, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if docs == 0:
            time.sleep(1.5)
            break
        try:
            if _state(db)[0] >= docs:
                break
        except psycopg.Error:
            pass  # schema not created yet
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make the input larger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_of_the_process_group_then_rerun_matches_a_clean_run(
    tmp_path: Path, cli_home: Path, pg_server: str
) -> None:
    docs = corpus(tmp_path / "docs", 24, pages=4)
    # Small embedding batches spread the commits over the run, so a kill lands between and inside them.
    config = tmp_path / "small-batches.yaml"
    config.write_text("batch_chunks: 8\n")
    clean_db = fresh_database(pg_server)
    ragline(cli_home, "ingest", "pdf", str(docs), RAGLINE_DATABASE_URL=clean_db)
    clean = _state(clean_db)
    assert clean[0] == 24

    db = fresh_database(pg_server)
    # Kill once while the run is starting and again in the middle of committing documents.
    for wait_for_docs in (0, 8):
        _kill_once_committed(cli_home, db, ["ingest", "pdf", str(docs)], wait_for_docs, RAGLINE_CONFIG=str(config))

    partial = _state(db)
    assert partial[0] < 24
    ragline(cli_home, "ingest", "pdf", str(docs), RAGLINE_DATABASE_URL=db)
    final = _state(db)
    assert final[0] == clean[0]
    assert final[1] == clean[1]  # the same content-derived ids
    assert final[2] == len(final[1]) == clean[2]  # and no row twice


def test_ingest_all_runs_every_source_and_reports_the_one_that_is_down(tmp_path: Path, cli_home: Path, db: str) -> None:
    from tests.support.fake_mediawiki import FakeWiki
    from tests.support.httpserver import Reply, serve

    wiki = FakeWiki()
    for i in range(12):
        wiki.add(f"Lighthouse {i}", f"Lighthouse number {i} has a lens polished by keeper {i}.")
    with serve() as good, serve() as down:
        good.route("/api.php", wiki.handler(good.url))
        down.route("/api.php", [Reply(503, b"maintenance")])
        config = tmp_path / "sources.yaml"
        fast = "{backoff_base: 0.01, backoff_max: 0.02, max_attempts: 3, breaker_threshold: 3}"
        config.write_text(
            "sources:\n"
            f"  - {{kind: mediawiki, name: lights, base_url: '{good.url}/api.php', page_size: 5, http: {fast}}}\n"
            f"  - {{kind: mediawiki, name: broken, base_url: '{down.url}/api.php', http: {fast}}}\n"
        )
        out = ragline(cli_home, "ingest", "all", check=False, RAGLINE_DATABASE_URL=db, RAGLINE_CONFIG=str(config))
        assert out.returncode == 1
        assert "source broken failed" in out.stderr and "lights: 12 documents seen: 12 ingested" in out.stdout
        assert len(down.calls()) == 3  # the breaker opened: no more calls

        status = json.loads(
            ragline(cli_home, "status", "--json", RAGLINE_DATABASE_URL=db, RAGLINE_CONFIG=str(config)).stdout
        )
        assert status["sources"]["lights"]["documents"] == 12
        assert status["sources"]["lights"]["cursor"]["mode"] == "incremental"
        assert status["sources"]["broken"]["last_run"]["status"] == "failed"

        one = ragline(
            cli_home, "ingest", "source", "lights", "--json", RAGLINE_DATABASE_URL=db, RAGLINE_CONFIG=str(config)
        )
        assert json.loads(one.stdout)["lights"]["counts"]["committed"] == 0
        unknown = ragline(cli_home, "ingest", "source", "nope", check=False, RAGLINE_CONFIG=str(config))
        assert unknown.returncode == 1 and "no source named 'nope'" in unknown.stderr and "lights" in unknown.stderr

    state = json.loads((cli_home / "prefect" / "server.json").read_text())
    names = {"name": {"any_": ["ingest-lights", "ingest-broken"]}}  # the server is the session's
    runs = httpx.post(f"{state['url']}/flow_runs/filter", json={"flow_runs": names, "limit": 100}, timeout=10).json()
    states = {r["name"]: r["state_type"] for r in runs if r["name"] in ("ingest-lights", "ingest-broken")}
    assert states == {"ingest-lights": "COMPLETED", "ingest-broken": "FAILED"}


def test_a_file_name_that_is_not_utf8_is_quarantined_through_the_flow(tmp_path: Path, cli_home: Path, db: str) -> None:
    docs = corpus(tmp_path / "docs", 1)
    os.rename(text_pdf(tmp_path / "x.pdf", ["Menu of the café."]), os.fsencode(docs) + b"/caf\xe9.pdf")
    first = json.loads(ragline(cli_home, "ingest", "pdf", str(docs), "--json", RAGLINE_DATABASE_URL=db).stdout)
    assert (first["committed"], first["quarantined"]) == (1, 1)
    again = json.loads(ragline(cli_home, "ingest", "pdf", str(docs), "--json", RAGLINE_DATABASE_URL=db).stdout)
    assert (again["still_quarantined"], again["committed"], again["quarantined"]) == (1, 0, 0)


def test_sigkill_mid_sync_then_rerun_fetches_only_what_was_not_committed(
    tmp_path: Path, cli_home: Path, pg_server: str
) -> None:
    from tests.support.fake_mediawiki import FakeWiki
    from tests.support.httpserver import Logged, Reply, serve

    wiki = FakeWiki()
    for i in range(60):
        wiki.add(f"Harbour {i:02d}", f"Harbour {i} keeps {i * 3} fishing boats and a pilot named Pilot{i}x.")
    served: list[set[int]] = [set(), set()]  # page ids answered before and after the kill
    phase = [0]

    with serve() as srv:
        inner = wiki.handler(srv.url)

        def slow(req: Logged) -> Reply:
            reply = inner(req)
            pages = (reply.body.get("query") or {}).get("pages") or [] if isinstance(reply.body, dict) else []
            served[phase[0]].update(p["pageid"] for p in pages if req.query.get("generator") == ["allpages"])
            reply.delay = 0.25  # a slow wiki, so the kill lands mid-sync
            return reply

        srv.route("/api.php", slow)
        config = tmp_path / "wiki.yaml"
        config.write_text(
            f"sources:\n  - {{kind: mediawiki, name: harbours, base_url: '{srv.url}/api.php', page_size: 5}}\n"
        )

        clean_db = fresh_database(pg_server)
        ragline(cli_home, "ingest", "source", "harbours", RAGLINE_DATABASE_URL=clean_db, RAGLINE_CONFIG=str(config))
        clean = _state(clean_db)
        assert clean[0] == 60
        served[0].clear()

        db = fresh_database(pg_server)
        _kill_once_committed(cli_home, db, ["ingest", "source", "harbours"], 20, RAGLINE_CONFIG=str(config))
        phase[0] = 1
        with psycopg.connect(db) as conn:
            rows = conn.execute("SELECT external_id FROM documents WHERE status = 'committed'").fetchall()
        committed_before = {int(r[0]) for r in rows}
        assert 20 <= len(committed_before) < 60

        ragline(cli_home, "ingest", "source", "harbours", RAGLINE_DATABASE_URL=db, RAGLINE_CONFIG=str(config))
    final = _state(db)
    assert final[0] == clean[0] and final[1] == clean[1] and final[2] == len(final[1]) == clean[2]
    # Committed pages are not fetched again, except at most the one batch whose cursor save the kill cut off.
    assert served[1] | committed_before == set(wiki.pages)
    assert len(served[1] & committed_before) <= 5


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie no parent reaped, as a detached child's can be here, has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_first_run_prepares_int8_in_the_background_for_the_runs_after_it(
    prefect_server: PrefectServer, tmp_path: Path, db: str
) -> None:
    from embedding.backend_status import backend_status
    from embedding.int8_export import is_cached
    from embedding.model import Embedder, EmbeddingSettings

    home = prefect_server.ragline_home(tmp_path / "home")
    try:
        out = ragline(home, "ingest", "pdf", str(corpus(tmp_path / "docs", 1)), RAGLINE_DATABASE_URL=db)
        assert "1 ingested" in out.stdout
        started = re.search(r"preparing the int8 model in the background \(pid (\d+)", out.stderr)
        assert started is not None, out.stderr
        pid = int(started[1])
        deadline = time.monotonic() + 900
        while running(pid) and time.monotonic() < deadline:
            time.sleep(1)
        assert not running(pid), "the background export did not finish in 15 minutes"
        assert is_cached(home / "calibration", Embedder(EmbeddingSettings()).revision)
        [device] = backend_status(EmbeddingSettings(), home)
        assert device.int8 is not None  # measured against the gates: the next runs choose with it
        again = ragline(home, "ingest", "pdf", str(corpus(tmp_path / "more", 1)), RAGLINE_DATABASE_URL=db)
        assert "1 ingested" in again.stdout and "preparing the int8" not in again.stderr
    finally:
        stop_embedded(home)
