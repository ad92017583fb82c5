"""What tracing costs an ingest: the same real PDFs ingested with spans exported over OTLP/HTTP to a local
collector, and with tracing off, taking turns in one run; and what the always-on metrics cost, apart.

    python bench/observability_overhead.py [PDF_OR_DIR...] [--repeat 5]

Each ingest is a fresh process (a process installs its tracer provider once and for all) ingesting into a
fresh database of one embedded Postgres, in-process through ``flows.pdfs.ingest_pdf_paths`` (the recorded run
every entry point uses; no Prefect, whose start would drown the difference): the model is loaded and the
store opened and migrated first, untimed, then the run is timed whole, its end's flush to the collector
included. ``on`` sets ``OTEL_EXPORTER_OTLP_ENDPOINT`` to a collector this process runs on 127.0.0.1 (the
same decoding one the tests use); ``off`` sets nothing. The two alternate within each repetition, the first
of the pair rotating, so the machine's noise falls on both. Ratios are of the medians: of wall time, and of
the ingesting process's CPU time (all of tracing's work is in that process, span export thread included;
CPU time moves less than wall time on a loaded machine).

Metrics cannot be turned off (they are counters in every process), so their cost is measured apart: the
recording calls a run makes (per document: parse and chunk phase times; per batch: embed and commit; per
run: its counts) timed in a loop, against the measured run's time per document.

Default corpus: ``examples/pdfs`` and two PDFs of this Debian machine (``bench/ingest_vs_floor.py``'s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
SPAN_DOCUMENTS = 500
"""Within the batch processor's default queue (2048 spans): a tight loop of more outruns the export and drops."""
sys.path.insert(0, str(ROOT))

from bench.ingest_vs_floor import DEFAULT_EXTRA, gather  # noqa: E402
from tests.support.otlp import collector  # noqa: E402
from vectorstore.embedded import embedded_url, stop_embedded  # noqa: E402


def one(database_url: str, corpus: Path, out: Path) -> None:
    """Child mode: one timed in-process ingest of ``corpus`` into the empty database ``database_url``."""
    from flows.pdfs import ingest_pdf_paths
    from flows.runtime import Services
    from flows.settings import load_settings
    from telemetry import tracing

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings({"RAGLINE_HOME": home, "RAGLINE_DATABASE_URL": database_url})
        svc = Services(settings)
        try:
            _ = svc.pipeline.model_id()  # the store opened and migrated, the generation registered
            svc.embedder.embed(["warm up the model before the clock starts"])
            started, cpu = time.perf_counter(), time.process_time()
            counts = ingest_pdf_paths(svc.pipeline, [corpus])
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            row = svc.conn.execute("SELECT figures FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            svc.conn.commit()
        finally:
            svc.close()
    out.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "traced": tracing.enabled(),
                "documents": counts.committed,
                "chunks": counts.chunks_written,
                "tokens": counts.embedded_tokens,
                "batches": row["figures"]["batches"] if row else 0,
            }
        )
    )


def span_cost(documents: int, out: Path) -> None:
    """Child mode (tracing on): the spans ``documents`` documents make, as the pipeline makes them (a
    document, its parse and chunk, a settlement; an embed and a commit per 8 documents), exported to the
    collector and flushed; the CPU time of this process, export thread included."""
    from connectors.base import DocumentError, ParsedDocument, SourceDocument
    from embedding.chunking import Chunk
    from flows.planning import SourceRef
    from flows.preparing import Chunked
    from flows.watch import RunWatch
    from telemetry import tracing

    setup = time.perf_counter()
    assert tracing.setup()  # once per process: the SDK and exporter imported, the provider and its thread
    setup = time.perf_counter() - setup
    chunks = [Chunk(i, 1, "text", 120) for i in range(20)]
    parsed = ParsedDocument("title", [], {"page_count": 12})
    source = SourceRef(0, "overhead-bench", "pdf", "default")
    started, cpu = time.perf_counter(), time.process_time()
    run = tracing.tracer().start_span("ragline.run")
    watch = RunWatch(source, run)
    batch = []
    for i in range(documents):
        doc = SourceDocument(f"/srv/docs/{i}.pdf", f"/srv/docs/{i}.pdf", "hash", lambda: parsed)
        span = watch.document(doc)
        now = time.time_ns()
        watch.prepared(span, Chunked(parsed, chunks, now - 2_000_000, now - 1_000_000, now))
        if i % 50 == 49:
            watch.quarantined(span, DocumentError("corrupt", "bench"))
        batch.append(span)
        if len(batch) == 8:
            now = time.time_ns()
            watch.embedded(now - 1_000_000, now, 160, 160, 19_200, [s for s in batch if s is not None])
            commit = watch.committing(now, [s for s in batch if s is not None])
            watch.committed(commit, 0.001, time.time_ns(), None)
            for s in batch:
                watch.settled(s, "committed")
            batch = []
    for s in batch:
        watch.settled(s, "committed")
    run.end()
    flush = time.perf_counter()
    tracing.flush(30_000)
    flush = time.perf_counter() - flush
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    out.write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "setup_s": setup, "flush_s": flush}))


def new_database(admin_url: str) -> str:
    name = f"overhead_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)


def spawn(database_url: str, corpus: Path, out: Path, endpoint: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_", "OTEL_"))}
    env["HF_HUB_OFFLINE"] = "1"
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", database_url, str(corpus), str(out)],
        env=env,
        cwd=ROOT,
        check=True,
    )
    result: dict[str, float] = json.loads(out.read_text())
    return result


def metrics_cost(documents: int, batches: int, loops: int = 20_000) -> dict[str, float]:
    """Seconds the metric recording of one run of ``documents`` documents in ``batches`` batches takes here."""
    from flows import metrics
    from flows.counts import Counts
    from flows.planning import SourceRef
    from flows.watch import RunWatch

    source = SourceRef(0, "overhead-bench", "pdf", "default")
    watch = RunWatch(source)
    counts = Counts(committed=documents, chunks_written=10 * documents, embedded_tokens=1000 * documents)
    started = time.perf_counter()
    for _ in range(loops):
        watch.phase("parse", 0.01)
        watch.phase("chunk", 0.001)
    per_document = (time.perf_counter() - started) / loops
    started = time.perf_counter()
    for _ in range(loops):
        watch.phase("embed", 0.1)
        watch.phase("commit", 0.01)
    per_batch = (time.perf_counter() - started) / loops
    started = time.perf_counter()
    for _ in range(loops // 10):
        metrics.record_run(source, "completed", counts, 1.0)
        RunWatch(source)  # a run's watch: its histogram children looked up once
    per_run = (time.perf_counter() - started) / (loops // 10)
    return {
        "per_document_s": per_document,
        "per_batch_s": per_batch,
        "per_run_s": per_run,
        "run_s": per_run + documents * per_document + batches * per_batch,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--spans":
        span_cost(int(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pdfs", nargs="*", type=Path, help="PDF files or folders (default: examples/pdfs + 2 Debian docs)")
    ap.add_argument("--repeat", type=int, default=5, help="Pairs of ingests (one traced, one not).")
    args = ap.parse_args()
    paths = args.pdfs or [ROOT / "examples" / "pdfs", *[p for p in DEFAULT_EXTRA if p.exists()]]
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="ragline-overhead-") as tmp:
        root = Path(tmp)
        files = gather(paths, root / "corpus")
        print(f"corpus: {len(files)} PDFs, {sum(f.stat().st_size for f in files) / 1e6:.2f} MB", flush=True)
        home = root / "pg"
        admin = embedded_url(home)
        times: dict[str, list[float]] = {"on": [], "off": []}
        cpus: dict[str, list[float]] = {"on": [], "off": []}
        last: dict[str, float] = {}
        try:
            with collector() as received:
                for rep in range(args.repeat):
                    order = ("on", "off") if rep % 2 == 0 else ("off", "on")
                    for mode in order:
                        endpoint = received.endpoint if mode == "on" else None
                        out = root / f"{mode}-{rep}.json"
                        last = spawn(new_database(admin), root / "corpus", out, endpoint)
                        assert bool(last["traced"]) == (mode == "on"), last
                        times[mode].append(last["seconds"])
                        cpus[mode].append(last["cpu_seconds"])
                        loads.append(os.getloadavg())
                        print(
                            f"rep {rep + 1} {mode:>3}: {last['seconds']:.2f} s, {last['cpu_seconds']:.2f} s CPU",
                            flush=True,
                        )
                spans = received.spans()
                out = root / "spans.json"
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = received.endpoint
                command = [sys.executable, str(Path(__file__).resolve()), "--spans", str(SPAN_DOCUMENTS), str(out)]
                subprocess.run(command, env=env, cwd=ROOT, check=True)
                span_run = json.loads(out.read_text())
                per_span_doc = span_run["cpu_seconds"] / SPAN_DOCUMENTS
                exported = len(received.spans()) - len(spans)
        finally:
            stop_embedded(home)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    cpu_on, cpu_off = statistics.median(cpus["on"]), statistics.median(cpus["off"])
    per_run = len(spans) / max(1, len(times["on"]))
    cost = metrics_cost(int(last["documents"]), int(last["batches"]))
    print(
        f"\ntracing on  (OTLP/HTTP to 127.0.0.1): median {on:.2f} s  {[round(t, 2) for t in times['on']]}\n"
        f"tracing off                         : median {off:.2f} s  {[round(t, 2) for t in times['off']]}\n"
        f"ratio on/off: {on / off:.3f} (target <= 1.02)\n"
        f"CPU time of the ingesting process (parser processes apart): median on {cpu_on:.2f} s, off {cpu_off:.2f} s,"
        f" ratio {cpu_on / cpu_off:.3f}\n"
        f"spans received: {len(spans)} ({per_run:.0f} per traced run: {int(last['documents'])} documents, "
        f"{int(last['chunks'])} chunks in {int(last['batches'])} batches, {int(last['tokens'])} tokens)\n"
        f"tracing's own CPU time, {SPAN_DOCUMENTS} documents' spans made and exported ({exported} spans): "
        f"{per_span_doc * 1e6:.0f} us a document, against {cpu_off / last['documents'] * 1e3:.0f} ms of CPU a "
        f"document in an untraced run: {per_span_doc * last['documents'] / cpu_off:.2e} of the run; once per "
        f"process, tracing.setup() {span_run['setup_s'] * 1e3:.0f} ms; the final flush of those "
        f"{exported} spans {span_run['flush_s'] * 1e3:.0f} ms\n"
        f"metrics recording of one such run: {cost['run_s'] * 1e6:.0f} us "
        f"({cost['per_document_s'] * 1e6:.1f} us a document, {cost['per_batch_s'] * 1e6:.1f} us a batch, "
        f"{cost['per_run_s'] * 1e6:.1f} us a run's counts): {cost['run_s'] / off:.2e} of the run's time\n"
        f"load average (1 min) during the run: min {min(x[0] for x in loads):.2f}, "
        f"max {max(x[0] for x in loads):.2f}; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
