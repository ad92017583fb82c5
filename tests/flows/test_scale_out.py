"""Two worker processes ingesting the same PDF set at once: each document is processed by exactly one of them
(per-document claims in Postgres), and the store ends exactly as one worker would leave it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import RaglineSettings
from tests.support.pdfgen import text_pdf

pytestmark = pytest.mark.slow

DOCS = 24


def _corpus(folder: Path) -> None:
    for i in range(DOCS):
        pages = [
            f"Report {i}, part {p}: " + " ".join(f"measurement {i}-{p}-{w} was nominal." for w in range(40))
            for p in range(2)
        ]
        text_pdf(folder / f"report-{i:02d}.pdf", pages)


def test_two_workers_claim_disjoint_documents_and_leave_no_duplicates(
    tmp_path: Path, database_url: str, settings: RaglineSettings, services: Services
) -> None:
    folder = tmp_path / "docs"
    _corpus(folder)
    home = tmp_path / "worker-home"
    home.mkdir()
    # Small embedding batches: each worker holds few claims at a time, so both get work from the same listing.
    (home / "config.yaml").write_text("batch_chunks: 4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env.update({"RAGLINE_HOME": str(home), "RAGLINE_DATABASE_URL": database_url})
    go = tmp_path / "go"
    workers = []
    for n in range(2):
        ready = tmp_path / f"ready-{n}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.scaleout_worker", str(folder), str(ready), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        workers.append((proc, ready))
    deadline = time.monotonic() + 400
    while not all(ready.exists() for _, ready in workers):
        assert all(p.poll() is None for p, _ in workers), [p.communicate() for p, _ in workers]
        assert time.monotonic() < deadline, "workers did not get ready"
        time.sleep(0.1)
    go.touch()
    results = []
    for proc, _ in workers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    committed = [r["committed"] for r in results]
    assert sum(committed) == DOCS, results  # every document committed once, by one worker
    assert all(c > 0 for c in committed), results  # both did part of the work
    assert sum(r["done_elsewhere"] for r in results) == DOCS, results  # the rest was left to the other
    conn = services.conn
    dupes = conn.execute(
        "SELECT count(*) AS n FROM (SELECT document_id, chunk_index FROM chunks GROUP BY 1, 2 HAVING count(*) > 1) d"
    ).fetchone()
    assert dupes == {"n": 0}
    total = conn.execute("SELECT count(*) AS n FROM chunks").fetchone()
    conn.commit()

    # the same corpus ingested by one worker into a fresh store gives the same chunk set
    again = ingest_pdf_paths(services.pipeline, [str(folder)])
    assert again.unchanged == DOCS and again.chunks_written == 0
    assert total is not None and total["n"] == sum(r["chunks_written"] for r in results)
