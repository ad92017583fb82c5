"""Latency of on-demand ingestion: with `ragline serve` warm, post one-page PDFs one at a time and measure from
the POST to the moment search finds a phrase unique to that PDF.

    python bench/trigger_latency.py [--requests 20] [--flow-compare 5] [--append docs/benchmarks.md]

A fresh RAGLINE_HOME is used (embedded Postgres, local Prefect server), `ragline serve --no-schedules` runs as a
subprocess, and this process searches the way `ragline search` does (hybrid search of the serving model),
polling every 50 ms. ``--flow-compare N`` then measures, in this process and warm, what wrapping one such
ingestion in the ``ingest-pdf`` Prefect flow costs against ingesting it directly through the Pipeline (the
choice the trigger endpoint makes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.pdfgen import text_pdf

FILLER = (
    "Harbour pilots board inbound vessels two miles offshore and guide them past the shoals, the breakwater "
    "and the old ferry slip, reading the tide tables and the wind before every approach. "
)
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron", "indigo", "jasper"]


def phrase(i: int) -> str:
    return f"zyx{WORDS[i % 10]}{i:03d}q"


def make_pdfs(root: Path, n: int, offset: int = 0) -> list[tuple[Path, str]]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(offset, offset + n):
        marker = phrase(i)
        path = text_pdf(root / f"doc{i:03d}.pdf", [f"Memo {i}. " + FILLER * 3 + f"The code word is {marker}."])
        out.append((path, marker))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_ready(home: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ragline serve exited with {proc.returncode}")
        state = home / "serve.json"
        if state.exists():
            url = str(json.loads(state.read_text())["url"])
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise SystemExit("ragline serve was not ready in time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--flow-compare", type=int, default=5, help="PDFs for the flow vs direct comparison (0: skip)")
    ap.add_argument("--append", type=Path, default=None, help="Append a markdown section to this file.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        config = Path(tmp) / "ragline.yaml"
        config.write_text("serve:\n  port: 0\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
        env.update({"RAGLINE_HOME": str(home), "RAGLINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1"})
        os.environ.update(env)
        for key in [k for k in os.environ if k.startswith("PREFECT_")]:
            del os.environ[key]
        pdfs = make_pdfs(Path(tmp) / "pdfs", args.requests)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragline", "serve", "--no-schedules"], env=env, start_new_session=True
        )
        try:
            url = wait_ready(home, proc)
            print(f"serve ready after {time.perf_counter() - started:.1f} s at {url}", flush=True)
            result = measure(url, pdfs)
            if args.flow_compare:
                result["flow"] = flow_compare(Path(tmp) / "cmp", args.flow_compare)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
            subprocess.run([sys.executable, "-m", "ragline", "stop"], env=env, capture_output=True, timeout=60)
    report(result, args.append)


def measure(url: str, pdfs: list[tuple[Path, str]]) -> dict[str, Any]:
    from flows.runtime import Services
    from flows.settings import load_settings
    from vectorstore.search import SearchFilter

    svc = Services(load_settings())
    scope = SearchFilter(source="inbox")
    svc.search("warm up", 1, where=scope)
    latencies: list[float] = []
    server: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for path, marker in pdfs:
            body = path.read_bytes()
            t0 = time.perf_counter()
            answer = client.post(
                "/v1/runs", content=body, params={"filename": path.name}, headers={"Content-Type": "application/pdf"}
            )
            if answer.status_code != 202:
                raise SystemExit(f"POST {path.name}: {answer.status_code} {answer.text}")
            while not any(marker in hit.text for hit in svc.search(marker, 3, where=scope)):
                if time.perf_counter() - t0 > 60:
                    raise SystemExit(
                        f"{path.name} not searchable after 60 s: {client.get(answer.json()['status_url'])}"
                    )
                time.sleep(0.05)
            latencies.append(time.perf_counter() - t0)
            record = client.get(answer.json()["status_url"]).json()
            if record["started_at"] and record["finished_at"]:
                server.append(record["finished_at"] - record["started_at"])
            print(
                f"{path.name}: {latencies[-1]:.3f} s (run {server[-1] if server else float('nan'):.3f} s)", flush=True
            )
    svc.close()
    return {"latencies": latencies, "server": server}


def flow_compare(root: Path, n: int) -> dict[str, list[float]]:
    """The same one-page ingestion, warm, as an ``ingest-pdf`` flow run on the local Prefect server and
    directly through the Pipeline; alternated so load drifts hit both."""
    from flows.prefect_server import configure
    from flows.runtime import Services, use_services
    from flows.settings import load_settings

    settings = load_settings()
    configure(settings.home, settings.prefect)
    from flows.ingest import ingest_pdf
    from flows.pdfs import ingest_pdf_paths

    svc = Services(settings)
    use_services(svc)
    warm = make_pdfs(root / "warm", 2, offset=900)
    ingest_pdf([str(warm[0][0])], "flowcheck")  # first flow run pays imports and registration
    ingest_pdf_paths(svc.pipeline, [str(warm[1][0])], "directcheck")
    docs = make_pdfs(root / "docs", 2 * n, offset=500)
    flow_s: list[float] = []
    direct_s: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        ingest_pdf([str(docs[2 * i][0])], "flowcheck")
        flow_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ingest_pdf_paths(svc.pipeline, [str(docs[2 * i + 1][0])], "directcheck")
        direct_s.append(time.perf_counter() - t0)
        print(f"flow {flow_s[-1]:.3f} s, direct {direct_s[-1]:.3f} s", flush=True)
    use_services(None)
    return {"flow": flow_s, "direct": direct_s}


def report(result: dict[str, Any], append: Path | None) -> None:
    lat, srv = result["latencies"], result["server"]
    med, p95 = statistics.median(lat), percentile(lat, 0.95)
    lines = [
        f"POST to searchable, {len(lat)} one-page PDFs: median {med:.3f} s, p95 {p95:.3f} s, "
        f"min {min(lat):.3f} s, max {max(lat):.3f} s",
        f"server-side run (start to commit): median {statistics.median(srv):.3f} s, p95 {percentile(srv, 0.95):.3f} s",
    ]
    flow = result.get("flow")
    if flow:
        lines.append(
            f"warm one-page ingestion as an ingest-pdf flow run: median {statistics.median(flow['flow']):.3f} s; "
            f"directly through the Pipeline: median {statistics.median(flow['direct']):.3f} s"
        )
    print("\n".join(lines))
    if append is None:
        return
    load = os.getloadavg()[0]
    section = [
        "",
        "## On-demand trigger latency (`bench/trigger_latency.py`)",
        "",
        f"`ragline serve` warm (1 worker, CPU, {platform.machine()}), {len(lat)} distinct one-page PDFs posted "
        "one at a time to `POST /v1/runs`; time from the POST to the moment a hybrid search (as `ragline search` "
        "runs it, from another process) returns the PDF's unique code word, polled every 50 ms. "
        f"{datetime.now(UTC):%Y-%m-%d}, load average {load:.1f} on {os.cpu_count()} cores.",
        "",
        "| measure | median | p95 | min | max |",
        "|---|---|---|---|---|",
        f"| POST to searchable | **{med:.2f} s** | {p95:.2f} s | {min(lat):.2f} s | {max(lat):.2f} s |",
        f"| server-side run (dequeue to commit) | {statistics.median(srv):.2f} s | {percentile(srv, 0.95):.2f} s "
        f"| {min(srv):.2f} s | {max(srv):.2f} s |",
    ]
    if flow:
        f_med, d_med = statistics.median(flow["flow"]), statistics.median(flow["direct"])
        section += [
            f"| the same ingestion as an `ingest-pdf` flow run (warm, in-process) | {f_med:.2f} s "
            f"| {percentile(flow['flow'], 0.95):.2f} s | {min(flow['flow']):.2f} s | {max(flow['flow']):.2f} s |",
            f"| directly through the warm Pipeline | {d_med:.2f} s | {percentile(flow['direct'], 0.95):.2f} s "
            f"| {min(flow['direct']):.2f} s | {max(flow['direct']):.2f} s |",
            "",
            f"A Prefect flow run around each request costs {f_med - d_med:.2f} s more at the median "
            f"({f_med / d_med:.1f}x the direct path): API calls for the flow run, its task runs, states, "
            "artifacts and logs. So the endpoint ingests directly on its warm workers and records each run in "
            "the store's `runs` table (`ragline status`); scheduled runs stay Prefect flow runs.",
        ]
    # Paragraphs wrapped like the rest of the file; table rows stay whole.
    wrapped = [line if line.startswith("|") else textwrap.fill(line, 115) for line in section]
    with append.open("a") as fh:
        fh.write("\n".join(wrapped) + "\n")
    print(f"appended to {append}")


if __name__ == "__main__":
    main()
