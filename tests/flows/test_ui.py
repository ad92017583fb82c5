"""The Prefect UI as an operator sees it: a real ``prefect server`` on 127.0.0.1, a real ``ragline ingest all``
against it (a PDF source with a truncated file, and a source whose API is down), then the UI's pages in
headless Chromium. The screenshots are kept under test-artifacts/prefect-ui/ at the repository root."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flows.artifacts import counts_key, progress_key
from tests.support.httpserver import Reply, serve
from tests.support.pdfgen import text_pdf, truncated_pdf
from tests.support.prefect import PrefectServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "prefect-ui"
WINDOW = (1400, 1000)
# Headless flags that work offline here; the UI needs a generous virtual time budget to load its data.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--virtual-time-budget=60000",
]


def chromium() -> str:
    """The browser is a requirement of this test, not an option: without it the test fails and says why."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail("chromium is not installed: `make sysdeps` installs it (apt-get install chromium)")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture
def prefect_ui(prefect_server: PrefectServer, tmp_path: Path) -> PrefectServer:
    """The session's Prefect server, the one users of ragline get: started by ragline itself
    (flows.prefect_server), on a port other than Prefect's default 4200, which its UI must be told
    (``/ui-settings``, checked when it starts) or the UI calls port 4200 and shows an error page. ragline runs
    here with a RAGLINE_HOME of the test's own that reuses that server."""
    return PrefectServer(prefect_server.ragline_home(tmp_path / "ragline-home"), prefect_server.api_url)


def browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's text once the UI has rendered it (and a screenshot of it): one headless Chromium per call,
    each with a new empty profile."""
    browser = chromium()
    profile.mkdir(parents=True, exist_ok=True)
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, f"chromium --dump-dom {url} failed: {dom.stderr[-2000:]}"
    if screenshot is not None:
        screenshot.unlink(missing_ok=True)
        shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
        assert shot.returncode == 0, f"chromium --screenshot {url} failed: {shot.stderr[-2000:]}"
        assert screenshot.exists(), f"chromium wrote no screenshot of {url}: {shot.stderr[-2000:]}"
    return page_text(dom.stdout)


def page_text(dom: str) -> str:
    """Visible text of a dumped DOM, whitespace folded."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def assert_real_screenshot(path: Path) -> None:
    """A rendered page, not a blank or an error canvas: the window's size, and many colours (text, badges)."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, f"{path} looks blank ({len(colours or [])} colours)"
    assert path.stat().st_size > 20_000


def api(base: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{base}/api{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_an_ingest_run_its_state_and_its_counts_show_in_the_prefect_ui(
    tmp_path: Path, prefect_ui: PrefectServer, database_url: str
) -> None:
    chromium()  # fail before minutes of ingestion when the browser is missing
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, topic in [("tides", "The Moon's pull raises two tidal bulges"), ("bees", "Honey bees dance")]:
        text_pdf(docs / f"{name}.pdf", [f"{topic}, page one.", f"{topic}, page two."], title=name)
    truncated_pdf(docs / "cut.pdf", docs / "tides.pdf", keep_fraction=0.5)

    began = datetime.now(UTC)
    with serve() as down:
        down.route("/api.php", [Reply(503, b"maintenance")])
        config = tmp_path / "ragline.yaml"
        fast = "{backoff_base: 0.01, backoff_max: 0.02, max_attempts: 2, breaker_threshold: 2}"
        config.write_text(
            "sources:\n"
            f"  - {{kind: pdf, name: docs, paths: ['{docs}']}}\n"
            f"  - {{kind: mediawiki, name: broken, base_url: '{down.url}/api.php', http: {fast}}}\n"
        )
        env = _clean_env(
            RAGLINE_HOME=str(prefect_ui.home),  # its local Prefect server is already up: ragline reuses it
            RAGLINE_DATABASE_URL=database_url,
            RAGLINE_CONFIG=str(config),
        )
        out = subprocess.run(
            [sys.executable, "-m", "ragline", "ingest", "all", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 1, out.stderr
    assert "source broken failed" in out.stderr
    result = json.loads(out.stdout)
    assert (result["docs"]["counts"]["committed"], result["docs"]["counts"]["quarantined"]) == (2, 1)

    # What the API holds: states that tell the truth, tags per source, task runs that read well.
    # The server is the session's: only the runs of this test (started after it began) are looked at.
    ours = {"start_time": {"after_": began.isoformat()}, "name": {"any_": ["ingest-docs", "ingest-broken"]}}
    flow_runs = {r["name"]: r for r in api(prefect_ui.base, "/flow_runs/filter", {"flow_runs": ours, "limit": 50})}
    assert set(flow_runs) == {"ingest-docs", "ingest-broken"}
    docs_run, broken_run = flow_runs["ingest-docs"], flow_runs["ingest-broken"]
    assert (docs_run["state_type"], docs_run["state_name"]) == ("COMPLETED", "CompletedWithQuarantine")
    assert set(docs_run["tags"]) == {"ragline", "source:docs", "kind:pdf", "quarantined"}
    assert broken_run["state_type"] == "FAILED"
    assert set(broken_run["tags"]) == {"ragline", "source:broken", "kind:mediawiki"}
    tasks = api(prefect_ui.base, "/task_runs/filter", {"flow_runs": {"id": {"any_": [docs_run["id"]]}}})
    assert {t["name"] for t in tasks} == {"plan-pdf-changes-docs", "ingest-pdf-documents-1/1"}
    assert all("source:docs" in t["tags"] for t in tasks)

    # Each run's artifacts: the counts under the source's key, and the progress of the documents.
    run_ids = [docs_run["id"], broken_run["id"]]
    artifacts = api(
        prefect_ui.base, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": run_ids}}, "sort": "CREATED_DESC"}
    )
    by_run: dict[str, dict[str, Any]] = {}
    for artifact in artifacts:
        by_run.setdefault(artifact["flow_run_id"], {})[artifact["key"]] = artifact
    counts = by_run[docs_run["id"]][counts_key("docs")]
    assert counts["type"] == "markdown"
    assert counts["data"].startswith("## Completed with 1 quarantined document\n")
    for row in ("| fetched | 3 |", "| embedded documents | 2 |", "| quarantined | 1 |", "| skipped unchanged | 0 |"):
        assert row in counts["data"]
    progress = by_run[docs_run["id"]][progress_key("docs")]
    assert (progress["type"], progress["data"]) == ("progress", 100.0)
    assert progress["description"] == "3 of 3 documents processed, 1 quarantined"
    failed = by_run[broken_run["id"]][counts_key("broken")]
    assert failed["data"].startswith("## Failed\n") and "**Error:**" in failed["data"]

    # What the operator sees.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    run_page = browse(
        f"{prefect_ui.base}/runs/flow-run/{docs_run['id']}", tmp_path / "chromium-1", SCREENSHOTS / "flow-run.png"
    )
    for text in ("ingest-docs", "CompletedWithQuarantine", "source:docs", "kind:pdf", "quarantined", "Artifacts"):
        assert text in run_page, f"{text!r} not on the flow run page: {run_page[:3000]}"
    assert "document(s) quarantined" in run_page  # the warning in the run's log

    artifact_page = browse(
        f"{prefect_ui.base}/artifacts/artifact/{counts['id']}",
        tmp_path / "chromium-2",
        SCREENSHOTS / "counts-artifact.png",
    )
    for text in (
        "Completed with 1 quarantined document",
        "fetched 3",
        "embedded documents 2",
        "quarantined 1",
        "ingest-docs",
        counts_key("docs"),
        "1 document(s) quarantined",  # the run's state message, beside the artifact
    ):
        assert text in artifact_page, f"{text!r} not on the artifact page: {artifact_page[:3000]}"

    failed_page = browse(
        f"{prefect_ui.base}/runs/flow-run/{broken_run['id']}", tmp_path / "chromium-3", SCREENSHOTS / "failed-run.png"
    )
    assert "ingest-broken" in failed_page and "Failed" in failed_page, failed_page[:3000]

    for name in ("flow-run.png", "counts-artifact.png", "failed-run.png"):
        assert_real_screenshot(SCREENSHOTS / name)
