"""Search latency through the warm service against the cold command, on a store of >= 100k chunks.

    python bench/search_latency.py [--rows 100000] [--queries 100] [--commands 15] [--append docs/benchmarks.md]

A fresh RAGLINE_HOME: the example PDFs are ingested for real (the real model, the real chunks), then the
store is grown to ``--rows`` chunks around them: each synthetic chunk takes a real chunk's vector plus gaussian
noise (cosine ~0.85 to it, normalised) and a shuffled mix of real chunks' words, 20 chunks per document, so the
HNSW graph and the full-text index hold what a real store of that size would. Then ``ragline serve
--no-schedules`` runs as a subprocess, and in one run:

- the whole ``ragline search`` command (process start to exit), with the service running and without it
  (``RAGLINE_SERVE_URL`` pointing nowhere: in-process), alternated;
- ``POST /v1/search`` latency (p50, p95) and throughput at 1, 4 and 16 concurrent clients, vector and hybrid.

Queries are passages of 6-12 words from real chunks and a few questions, as a person would type them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trigger_latency import percentile, wait_ready

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "how is a flattened device tree blob passed to the kernel",
    "what does cvs do when two developers change the same file",
    "vendor branch for third party sources",
    "how does the client send a file to the server",
    "phandle references between nodes",
    "merging changes from a branch",
]
CHUNKS_PER_DOC = 20


def ragline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "ragline", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ragline {' '.join(args)} failed: {done.stderr}")
    return done


def grow(rows: int, rng: np.random.Generator) -> tuple[int, list[str]]:
    """Grow the store to ``rows`` chunks of the active generation around the real ones; returns the count and
    query passages taken from the real chunks."""
    from flows.runtime import Services
    from flows.settings import load_settings
    from vectorstore import generations, indexing, ledger, store
    from vectorstore.indexing import IndexOptions
    from vectorstore.ledger import DocumentVersion
    from vectorstore.migrations import index_name
    from vectorstore.store import ChunkRow, DocumentCommit

    svc = Services(load_settings())
    conn = svc.conn
    gen = generations.active(conn)
    assert gen is not None
    real = conn.execute("SELECT text, embedding FROM chunks WHERE model_id = %s ORDER BY id", (gen.id,)).fetchall()
    conn.commit()
    base = np.stack([np.asarray(r["embedding"].to_numpy(), dtype=np.float32) for r in real])
    words = [r["text"].split() for r in real]
    prand = random.Random(7)
    passages = []
    for w in words:
        if len(w) >= 16:
            start = prand.randrange(0, len(w) - 12)
            passages.append(" ".join(w[start : start + prand.randint(6, 12)]))
    source_id = ledger.ensure_source(conn, "synthetic", "pdf")
    todo = rows - len(real)
    written = 0
    started = time.perf_counter()
    doc = 0
    while written < todo:
        items, vectors = [], {}
        for _ in range(250):
            n = min(CHUNKS_PER_DOC, todo - written)
            if n <= 0:
                break
            picks = rng.integers(0, len(real), size=n)
            noise = rng.standard_normal((n, base.shape[1]), dtype=np.float32) * 0.03
            v = base[picks] + noise
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            chunks = []
            for j, p in enumerate(picks):
                mixed = words[int(p)] + words[int(rng.integers(0, len(real)))][:40]
                rng.shuffle(mixed)
                cid = uuid.uuid5(uuid.NAMESPACE_URL, f"synthetic/{doc}/{j}")
                chunks.append(ChunkRow(cid, j, 1, " ".join(mixed[:120]), 128))
                vectors[cid] = v[j]
            version = DocumentVersion(
                external_id=f"synthetic-{doc}",
                uri=f"file:///synthetic/{doc}.pdf",
                title=f"synthetic {doc}",
                content_hash=f"s{doc}",
                fingerprint="bench",
            )
            items.append(DocumentCommit(version, chunks))
            written += n
            doc += 1
        store.commit_documents(conn, source_id, items, vectors, gen.id)
    print(f"grew the store by {written} chunks in {time.perf_counter() - started:.1f} s", flush=True)
    with conn.transaction():  # built once over the whole store, as a bulk load does
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(gen.id))))
    seconds = indexing.build_index(conn, gen, IndexOptions.from_settings(svc.settings.database))
    total = conn.execute("SELECT count(*) AS n FROM chunks WHERE model_id = %s", (gen.id,)).fetchone()
    conn.commit()
    print(f"HNSW index over {total['n'] if total else '?'} chunks in {seconds:.1f} s", flush=True)
    svc.close()
    return int(total["n"]) if total else 0, passages


def wait_exports(home: Path, timeout: float = 900) -> float:
    """Wait for the exports ``ragline serve`` builds in the background once warm (the steady state measured:
    the in-process search then runs on OpenVINO)."""
    started = time.perf_counter()
    calibration = home / "calibration"
    while time.perf_counter() - started < timeout:
        kinds = {p.parent.name.split("-")[1] for p in calibration.glob("openvino-*/model.xml")}
        if {"float32", "int8"} <= kinds:
            return time.perf_counter() - started
        time.sleep(1)
    raise SystemExit("serve's OpenVINO exports were not ready in time")


def command_latency(env: dict[str, str], queries: list[str], n: int) -> dict[str, list[float]]:
    """The whole command, with the service and without (alternated, so drifts in load hit both alike)."""
    alone = {**env, "RAGLINE_SERVE_URL": "http://127.0.0.1:9"}
    out: dict[str, list[float]] = {"with serve": [], "without serve": []}
    for i in range(n):
        for name, e in (("with serve", env), ("without serve", alone)):
            t0 = time.perf_counter()
            ragline(e, "search", queries[i % len(queries)], "-k", "5", "--json")
            out[name].append(time.perf_counter() - t0)
        print(f"command {i}: with {out['with serve'][-1]:.2f} s, without {out['without serve'][-1]:.2f} s", flush=True)
    return out


async def http_latency(url: str, queries: list[str], mode: str, clients: int, total: int) -> tuple[list[float], float]:
    lat: list[float] = []
    todo = list(range(total))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await client.post("/v1/search", json={"query": queries[0], "k": 5, "mode": mode})

        async def worker() -> None:
            while todo:
                i = todo.pop()
                t0 = time.perf_counter()
                answer = await client.post(
                    "/v1/search", json={"query": queries[i % len(queries)], "k": 5, "mode": mode}
                )
                lat.append(time.perf_counter() - t0)
                if answer.status_code != 200:
                    raise SystemExit(f"search answered {answer.status_code}: {answer.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return lat, total / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100, help="HTTP searches per mode and concurrency")
    ap.add_argument("--commands", type=int, default=15, help="ragline search commands per arm")
    ap.add_argument("--append", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # Postgres may still be stopping
        home = Path(tmp) / "home"
        config = Path(tmp) / "ragline.yaml"
        config.write_text("serve:\n  port: 0\n  search_concurrency: 4\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
        env.update({"RAGLINE_HOME": str(home), "RAGLINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1"})
        os.environ.update(env)
        ragline(env, "ingest", "pdf", str(ROOT / "examples" / "pdfs"))
        chunks, passages = grow(args.rows, rng)
        queries = QUESTIONS + random.Random(3).sample(passages, min(60, len(passages)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragline", "serve", "--no-schedules"],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = wait_ready(home, proc)
            exported = wait_exports(home)
            print(f"serve's background OpenVINO exports (float32, int8) ready after {exported:.0f} s", flush=True)
            commands = command_latency(env, queries, args.commands)
            http: dict[tuple[str, int], tuple[list[float], float]] = {}
            for mode in ("vector", "hybrid"):
                for clients in (1, 4, 16):
                    http[(mode, clients)] = asyncio.run(http_latency(url, queries, mode, clients, args.queries))
                    lat, qps = http[(mode, clients)]
                    print(
                        f"{mode} x{clients}: p50 {statistics.median(lat) * 1000:.1f} ms, "
                        f"p95 {percentile(lat, 0.95) * 1000:.1f} ms, {qps:.1f} q/s",
                        flush=True,
                    )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
            subprocess.run([sys.executable, "-m", "ragline", "stop"], env=env, capture_output=True, timeout=60)
    report(chunks, commands, http, args.append)


def report(
    chunks: int,
    commands: dict[str, list[float]],
    http: dict[tuple[str, int], tuple[list[float], float]],
    append: Path | None,
) -> None:
    w, wo = commands["with serve"], commands["without serve"]
    lines = [
        "",
        "## Search latency: the warm service against the cold command (`bench/search_latency.py`)",
        "",
        f"{chunks:,} chunks (the example PDFs ingested for real, grown with noisy copies of their vectors and "
        "shuffled words), HNSW (m 16, ef_construction 64), all-MiniLM-L6-v2 on the CPU, "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"{datetime.now(UTC):%Y-%m-%d}. One run; the two command arms alternated.",
        "",
        "| `ragline search` (whole command, k 5) | p50 | p95 | runs |",
        "|---|---|---|---|",
        f"| with `ragline serve` running | **{statistics.median(w):.2f} s** | {percentile(w, 0.95):.2f} s | {len(w)} |",
        f"| without (in-process: query model alone) | **{statistics.median(wo):.2f} s** | {percentile(wo, 0.95):.2f} s "
        f"| {len(wo)} |",
        "",
        "| `POST /v1/search` (k 5) | clients | p50 | p95 | queries/s |",
        "|---|---|---|---|---|",
    ]
    for (mode, clients), (lat, qps) in http.items():
        lines.append(
            f"| {mode} | {clients} | {statistics.median(lat) * 1000:.1f} ms | {percentile(lat, 0.95) * 1000:.1f} ms "
            f"| {qps:.1f} |"
        )
    text = "\n".join(line if line.startswith("|") else textwrap.fill(line, 115) for line in lines)
    print(text)
    if append is not None:
        with append.open("a") as fh:
            fh.write(text + "\n")
        print(f"appended to {append}")


if __name__ == "__main__":
    main()
