"""A folder of PDFs ingested, then copied under new names and ingested again: tokens embedded and wall time of
the copy against the first ingest, through the real CLI in fresh processes, in one run.

    python bench/reuse.py [PDF_DIR] [--repeat 3] [--serve]

A fresh RAGLINE_HOME is warmed first with an unrelated one-page PDF (the embedded Postgres and the Prefect
server start there; the int8 export and calibration that first run leaves to a background child are waited
for), so both measured ingests run on a running system and the ratio compares their own work:
the first ingest parses, loads the model and embeds; a copy should only parse and write (its chunks take the
stored vectors of the same text, docs/design.md). Each repeat copies the folder again under other names. A
copy of the one-page warm-up file at the end shows what any run costs beyond its documents.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest_vs_floor import wait_for_background
from bench.trigger_latency import wait_ready
from connectors.pdf import RACY_SECONDS
from vectorstore.embedded import embedded_url

HEADER = (
    "| run | documents | tokens embedded | chunks embedded | chunks reused | wall | x first | in the run | x first |"
)
WARM_UP = "Lighthouse keepers trimmed the wicks at dusk and logged every passing ship by lamplight."


def one_page_pdf(text: str) -> bytes:
    """A minimal PDF of one page of Helvetica text (no dependency beyond the standard library)."""
    stream = f"BT /F1 11 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@dataclass
class Ingest:
    seconds: float
    counts: dict[str, int]
    in_run: float = 0.0
    """The run's own time (its ``runs`` row, inside the flow): without the CLI's imports and Prefect's start."""


def ingest(home: Path, folder: Path) -> Ingest:
    """``ragline ingest pdf FOLDER --json`` in a fresh process: its wall time and counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env["RAGLINE_HOME"] = str(home)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ragline", "ingest", "pdf", str(folder), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ragline ingest pdf {folder} failed: {proc.stderr.strip()}")
    # The counts are the last line: a library's progress bar on stdout (int8 export) comes before it.
    [counts] = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1:]
    return Ingest(seconds, json.loads(counts))


def copy_renamed(src: Path, dest: Path, prefix: str) -> None:
    """``src`` copied to ``dest`` with every file under a new name (new paths: new documents)."""
    for path in sorted(src.rglob("*.pdf")):
        target = dest / path.relative_to(src).with_name(prefix + path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def record_run_times(home: Path, ingests: list[Ingest]) -> None:
    """Each ingest's own time from the ``runs`` table (one row per ingest, in order)."""
    with psycopg.connect(embedded_url(home)) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM finished_at - started_at) FROM runs WHERE finished_at IS NOT NULL ORDER BY id"
        ).fetchall()
    if len(rows) != len(ingests):
        raise SystemExit(f"{len(rows)} runs recorded for {len(ingests)} ingests")
    for ingest_, (seconds,) in zip(ingests, rows, strict=True):
        ingest_.in_run = float(seconds)


def row(label: str, run: Ingest, first: Ingest) -> str:
    c = run.counts
    return (
        f"| {label} | {c['committed']} | {c['embedded_tokens']} | {c['chunks_written']} | {c['chunks_reused']} "
        f"| {run.seconds:.2f} s | {run.seconds / first.seconds:.2f} "
        f"| {run.in_run:.2f} s | {run.in_run / first.in_run:.2f} |"
    )


def on_serve(root: Path, corpus: Path, copies: list[Path], calibration: Path) -> tuple[Ingest, list[Ingest]]:
    """The same ingests on a warm ``ragline serve`` (a live deployment): each folder a configured PDF source,
    triggered by ``POST /v1/runs`` and timed from the POST until its run's record is final. Its own home, with
    the calibration (int8 export included) the CLI's home made, so that both embed at the same precision."""
    home, config = root / "serve-home", root / "serve.yaml"
    shutil.copytree(calibration, home / "calibration")
    folders = {"first": corpus, **{f"copy-{i}": folder for i, folder in enumerate(copies)}}
    config.write_text(
        "serve:\n  port: 0\nsources:\n"
        + "".join(f"  - {{kind: pdf, name: {name}, paths: [{json.dumps(str(p))}]}}\n" for name, p in folders.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env.update({"RAGLINE_HOME": str(home), "RAGLINE_CONFIG": str(config)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragline", "serve", "--no-schedules"], env=env, start_new_session=True
    )
    try:
        url = wait_ready(home, proc)
        with httpx.Client(base_url=url, timeout=60) as client:
            runs = {name: triggered(client, name) for name in folders}
    finally:
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        finally:  # its Postgres and Prefect server outlive it: stopped by their home whatever happened
            subprocess.run([sys.executable, "-m", "ragline", "stop"], env=env, capture_output=True, timeout=60)
    return runs["first"], [runs[f"copy-{i}"] for i in range(len(copies))]


def triggered(client: httpx.Client, source: str) -> Ingest:
    started = time.perf_counter()
    answer = client.post("/v1/runs", json={"source": source})
    if answer.status_code != 202:
        raise SystemExit(f"POST /v1/runs {source}: {answer.status_code} {answer.text}")
    while True:
        record = client.get(answer.json()["status_url"]).json()
        if record["finished_at"] is not None:
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if record["state"] != "completed":
        raise SystemExit(f"the run of {source} ended {record['state']}: {record['error']}")
    return Ingest(seconds, record["counts"], in_run=record["finished_at"] - record["started_at"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pdfs", nargs="?", default=str(Path(__file__).parent.parent / "examples" / "pdfs"))
    ap.add_argument("--repeat", type=int, default=3, help="copies ingested (each under other names)")
    ap.add_argument("--serve", action="store_true", help="also the same ingests on a warm `ragline serve`")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home, corpus = root / "home", root / "corpus"
        shutil.copytree(args.pdfs, corpus)
        files = sorted(corpus.rglob("*.pdf"))
        size = sum(f.stat().st_size for f in files)
        (root / "warm").mkdir()
        (root / "warm" / "warm-up.pdf").write_bytes(one_page_pdf(WARM_UP))
        time.sleep(RACY_SECONDS + 0.1)  # files this fresh are read again by the next run: not what is measured
        try:
            warm = ingest(home, root / "warm")
            # The warm-up leaves the int8 export and its calibration to a child at the lowest priority: done
            # before anything is measured, as in a home that ran before, so that it never runs beside a run.
            wait_for_background(home)
            first = ingest(home, corpus)
            copies = []
            for i in range(args.repeat):
                folder = root / f"copy-{i}"
                copy_renamed(corpus, folder, f"copy {i} of ")
                time.sleep(RACY_SECONDS + 0.1)
                copies.append(ingest(home, folder))
            # What any flow run costs beyond its documents: a one-page copy (CLI imports, Prefect flow and task).
            copy_renamed(root / "warm", root / "floor", "copy of ")
            time.sleep(RACY_SECONDS + 0.1)
            floor = ingest(home, root / "floor")
            record_run_times(home, [warm, first, *copies, floor])
        finally:  # the embedded Postgres and the Prefect server outlive the CLI: stopped by their home
            env = {**os.environ, "RAGLINE_HOME": str(home)}
            subprocess.run([sys.executable, "-m", "ragline", "stop"], env=env, check=False)
        if args.serve:
            folders = [root / f"copy-{i}" for i in range(args.repeat)]
            served = on_serve(root, corpus, folders, home / "calibration")
    median = statistics.median(c.seconds for c in copies)
    print(f"corpus: {args.pdfs} ({len(files)} PDFs, {size / 1e6:.2f} MB)")
    warm_up = "first ever run: initdb, Prefect server start, model load, precision calibration"
    print(f"warm-up ({warm_up}): {warm.seconds:.2f} s")
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|---|")
    print(row("first ingest (running system)", first, first))
    for i, c in enumerate(copies):
        print(row(f"copy {i} under new names", c, first))
    print(row("a one-page copy (fixed cost of a run)", floor, first))
    embedded = max(c.counts["embedded_tokens"] for c in copies)
    ratio = median / first.seconds
    print(f"copies: median {median:.2f} s = {ratio:.2f}x the first ingest; most tokens embedded by one: {embedded}")
    in_run = statistics.median(c.in_run for c in copies)
    print(f"in the run: median {in_run:.2f} s = {in_run / first.in_run:.2f}x the first ingest's {first.in_run:.2f} s")
    if args.serve:
        serve_first, serve_copies = served
        print("\nOn a warm `ragline serve` (POST /v1/runs, each folder a configured source, until its run is final):")
        print(HEADER)
        print("|---|---|---|---|---|---|---|---|---|")
        print(row("first ingest", serve_first, serve_first))
        for i, c in enumerate(serve_copies):
            print(row(f"copy {i} under new names", c, serve_first))
        median = statistics.median(c.seconds for c in serve_copies)
        print(f"serve copies: median {median:.2f} s = {median / serve_first.seconds:.2f}x the first ingest")


if __name__ == "__main__":
    main()
