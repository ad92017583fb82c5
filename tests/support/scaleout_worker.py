"""One ingestion worker process for the scale-out test: loads the model and opens the database, says it is
ready, waits for the start signal (so workers really run at once), ingests the PDF folder, prints its counts
as JSON. ``python -m tests.support.scaleout_worker DIR READY_FILE GO_FILE`` with RAGLINE_HOME and
RAGLINE_DATABASE_URL set."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import load_settings


def main() -> None:
    folder, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    svc = Services(load_settings())
    try:
        svc.embedder.embed(["warm up"])
        _ = svc.pipeline.generation
        ready.touch()
        deadline = time.monotonic() + 600
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no start signal within 600 s")
            time.sleep(0.05)
        started = time.perf_counter()
        counts = ingest_pdf_paths(svc.pipeline, [folder])
        print(json.dumps({**counts.as_dict(), "seconds": time.perf_counter() - started}))
    finally:
        svc.close()


if __name__ == "__main__":
    main()
