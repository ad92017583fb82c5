"""Wall time of the commands users run most, through the real CLI in fresh processes, measured side by side.

    python bench/reingest.py [PDF_DIR] [--repeat 5]

Reports the first ingest, the second ingest of the unchanged corpus (the no-op path: ledger check by each
file's stat, no file read, no Prefect, no model), a one-file change (the flow on the warm local Prefect
server), and `status`; and for each ingest the bytes of PDF files it read (the run's `bytes_read`), against
the corpus's size. A fresh RAGLINE_HOME is used, so the first ingest includes starting the embedded Postgres
and the Prefect server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from connectors.pdf import RACY_SECONDS

BYTES_READ: list[int] = []
"""``bytes_read`` of every ingest run by ``run``, in order."""


def run(home: Path, *args: str, config: Path | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env["RAGLINE_HOME"] = str(home)
    if config is not None:
        env["RAGLINE_CONFIG"] = str(config)
    ingest = args[0] == "ingest"
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "ragline", *args, *(["--json"] if ingest else [])]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ragline {' '.join(args)} failed: {proc.stderr.strip()}")
    seconds = time.perf_counter() - t0
    if ingest:
        BYTES_READ.append(int(json.loads(proc.stdout)["bytes_read"]))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pdfs", nargs="?", default=str(Path(__file__).parent.parent / "examples" / "pdfs"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, corpus = Path(tmp) / "home", Path(tmp) / "corpus"
        shutil.copytree(args.pdfs, corpus)
        files = sorted(corpus.rglob("*.pdf"))
        corpus_bytes = sum(f.stat().st_size for f in files)
        # A file changed in the last RACY_SECONDS is not trusted by its stat (a write in the same timestamp tick
        # could repeat it): wait that out, as for a corpus that is not being written.
        time.sleep(RACY_SECONDS + 0.1)
        first = run(home, "ingest", "pdf", str(corpus))
        read_first = BYTES_READ[-1]
        noop = [run(home, "ingest", "pdf", str(corpus)) for _ in range(args.repeat)]
        read_noop = max(BYTES_READ[-args.repeat :])
        status = [run(home, "status") for _ in range(args.repeat)]
        ephemeral = Path(tmp) / "ephemeral.yaml"
        ephemeral.write_text("prefect:\n  mode: ephemeral\n")
        changed: list[float] = []
        changed_ephemeral: list[float] = []
        victim = files[0]
        original = victim.read_bytes()
        read_changed: list[int] = []
        for i in range(args.repeat):
            # Appending an incremental-update comment changes the hash, not the text: the flow runs, the
            # document is re-parsed and its chunks keep their vectors. Alternate the two Prefect modes.
            victim.write_bytes(original + f"\n%ragline-bench {i}\n%%EOF\n".encode())
            changed.append(run(home, "ingest", "pdf", str(corpus)))
            read_changed.append(BYTES_READ[-1] - victim.stat().st_size)  # bytes read beyond the changed file
            victim.write_bytes(original + f"\n%ragline-bench {i} ephemeral\n%%EOF\n".encode())
            changed_ephemeral.append(run(home, "ingest", "pdf", str(corpus), config=ephemeral))
        run(home, "stop")
    m_noop, m_status, m_changed, m_eph = (statistics.median(x) for x in (noop, status, changed, changed_ephemeral))
    print(f"corpus: {args.pdfs}")
    print(f"first ingest (cold home: initdb, Prefect server start, model load): {first:6.2f} s")
    label = f"re-ingest unchanged (median of {args.repeat}):"
    print(f"{label:67s}{m_noop:6.2f} s  ({first / m_noop:.0f}x faster than the first)")
    print(f"re-ingest with one file touched (flow on the warm Prefect server): {m_changed:6.2f} s")
    print(
        f"the same with Prefect's ephemeral mode (server per process):       {m_eph:6.2f} s"
        f"  ({m_eph / m_changed:.1f}x slower)"
    )
    print(f"status (median):                                                   {m_status:6.2f} s")
    print(f"bytes read: corpus {corpus_bytes} in {len(files)} files; first ingest {read_first}; unchanged re-run")
    print(f"  {read_noop} (the most of {args.repeat}); one file changed: that file plus {max(read_changed)} (the most)")


if __name__ == "__main__":
    main()
