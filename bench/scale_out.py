"""Scale-out: one `ragline ingest pdf` against two started together on the same PDF set, through the real CLI
(each a Prefect flow run on the shared local server, one embedded Postgres), measured in one run.

    python bench/scale_out.py [--copies 4] [--threads auto]

The corpus is examples/pdfs copied ``--copies`` times (distinct documents, realistic text). Each setup
starts from a fresh RAGLINE_HOME with Postgres and the Prefect server already up, so the times are the
ingestion's. Reports wall times, the speed-up, how the documents split between the two workers, and checks
that both setups end with the same chunk count and no duplicates. On a machine with few cores both workers
compete for the same CPU: the speed-up there is bounded by what the model leaves idle (parsing, commits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(home: Path, threads: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env["RAGLINE_HOME"] = str(home)
    if threads != "auto":
        env["OMP_NUM_THREADS"] = threads
    return env


def _ragline(home: Path, threads: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ragline", *args],
        env=_env(home, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"ragline failed: {err.strip()[-2000:]}")
    result: dict[str, int] = json.loads(out)
    return result


def _prepare(home: Path) -> None:
    """Start the embedded Postgres and the local Prefect server before the clock starts."""
    script = (
        "from flows.settings import load_settings; from flows.prefect_server import configure; "
        "from flows.runtime import Services; s = load_settings(); configure(s.home, s.prefect); "
        "svc = Services(s); svc.conn; svc.close()"
    )
    subprocess.run([sys.executable, "-c", script], env=_env(home, "auto"), check=True, cwd=ROOT)


def _stop(home: Path) -> None:
    subprocess.run([sys.executable, "-m", "ragline", "stop"], env=_env(home, "auto"), capture_output=True)


def _chunks(home: Path, threads: str) -> tuple[int, int]:
    status = _wait(_ragline(home, threads, "status", "--json"))
    script = (
        "from flows.settings import load_settings; from flows.runtime import Services; svc = Services(load_settings());"
        "r = svc.conn.execute('SELECT count(*) AS n FROM (SELECT document_id, chunk_index FROM chunks"
        " GROUP BY 1, 2 HAVING count(*) > 1) d').fetchone(); print(r['n']); svc.close()"
    )
    dupes = subprocess.run([sys.executable, "-c", script], env=_env(home, threads), capture_output=True, text=True)
    return int(status["chunks"]), int(dupes.stdout.strip() or -1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4, help="Copies of examples/pdfs in the corpus.")
    ap.add_argument("--threads", default="auto", help="OMP_NUM_THREADS per worker (auto: torch's default).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for i in range(args.copies):
            shutil.copytree(ROOT / "examples" / "pdfs", corpus / f"copy-{i}")
        files = len(list(corpus.rglob("*.pdf")))
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        for home in (one, two):
            _prepare(home)
        try:
            t0 = time.perf_counter()
            single = _wait(_ragline(one, args.threads, "ingest", "pdf", str(corpus), "--json"))
            t_one = time.perf_counter() - t0

            t0 = time.perf_counter()
            procs = [_ragline(two, args.threads, "ingest", "pdf", str(corpus), "--json") for _ in range(2)]
            pair = [_wait(p) for p in procs]
            t_two = time.perf_counter() - t0

            chunks_one, dupes_one = _chunks(one, args.threads)
            chunks_two, dupes_two = _chunks(two, args.threads)
        finally:
            for home in (one, two):
                _stop(home)
    print(f"corpus: {files} PDFs ({args.copies} copies of examples/pdfs), OMP threads per worker: {args.threads}")
    print(f"one worker:  {t_one:6.1f} s, committed {single['committed']}, chunks {chunks_one}, duplicates {dupes_one}")
    print(
        f"two workers: {t_two:6.1f} s, committed {pair[0]['committed']} + {pair[1]['committed']}, "
        f"left to the other {pair[0]['done_elsewhere']} + {pair[1]['done_elsewhere']}, chunks {chunks_two}, "
        f"duplicates {dupes_two}"
    )
    print(f"speed-up: {t_one / t_two:.2f}x")
    if chunks_one != chunks_two or dupes_two or pair[0]["committed"] + pair[1]["committed"] != files:
        raise SystemExit("the two-worker store differs from the one-worker store")


if __name__ == "__main__":
    main()
