"""A 2,000-record CRM source behind a hostile server (a per-second limit it enforces with 429, ~20% of calls
failing, some slow answers), synced with the real pipeline and model: total time against the ideal time at
the configured rate (the fewest requests the sync needs / rate), with fetch-ahead on and off, side by side.

    python bench/throttled_sync.py [--records 2000] [--rate 4] [--page-size 25] [--rounds 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.http import HttpPolicy, ResilientClient
from connectors.hubspot import HubSpotSettings, HubSpotSource
from flows.runtime import Services
from flows.settings import load_settings
from tests.support.fake_hubspot import FakeHubSpot
from tests.support.hostile import Hostile, max_in_window
from tests.support.httpserver import serve
from tests.support.remote import sync
from vectorstore.embedded import stop_embedded


def one_sync(home: Path, args: argparse.Namespace, depth: int, db: int, svc_model: Services | None) -> dict[str, float]:
    fake = FakeHubSpot()
    for i in range(args.records):
        fake.upsert("companies", str(i + 1), name=f"Company {i:05d}", description=f"Makes widget model W{i:05d}.")
    hostile = Hostile(fake.handler(), limit_per_second=args.rate, fail_rate=args.fail_rate, seed=db)
    settings = load_settings({"RAGLINE_HOME": str(home)})
    svc = Services(settings, shared_embedder=svc_model.embedder if svc_model else None)
    svc.conn.execute("TRUNCATE chunks, documents, sources, runs CASCADE")
    svc.conn.commit()
    policy = HttpPolicy(rate_per_second=args.rate, burst=1, backoff_base=0.25, backoff_max=4.0, max_attempts=12)
    with serve() as srv:
        srv.route("/crm/v3/objects/companies", hostile)
        srv.route("/crm/v3/objects/companies/search", hostile)
        cfg = HubSpotSettings(name="crm", base_url=srv.url, objects=["companies"], page_size=args.page_size)
        client = ResilientClient("crm", policy, base_url=srv.url, headers={"Authorization": "Bearer t"})
        t0 = time.perf_counter()
        counts = sync(svc, "crm", HubSpotSource(cfg, client), prefetch_depth=depth)
        elapsed = time.perf_counter() - t0
        arrivals = [c.at for c in srv.calls()]
    row = svc.conn.execute("SELECT count(*) AS n FROM documents WHERE status = 'committed'").fetchone()
    svc.conn.commit()
    svc.close()
    if counts.committed != args.records or row is None or row["n"] != args.records:
        raise SystemExit(f"not exactly once: committed {counts.committed}, ledger {row}")
    return {
        "elapsed": elapsed,
        "requests": len(arrivals),
        "failed": hostile.failed,
        "throttled": hostile.throttled,
        "max_1s": max_in_window(arrivals, 1.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--page-size", type=int, default=25)
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    # The fewest calls: every search page plus one archived listing, at the configured rate.
    needed = math.ceil(args.records / args.page_size) + 1
    ideal = needed / args.rate
    results: dict[int, list[dict[str, float]]] = {2: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        warm = Services(load_settings({"RAGLINE_HOME": str(home)}))
        warm.embedder.embed(["warm up"])
        try:
            for r in range(args.rounds):
                for depth in (2, 0):  # interleaved: machine noise hits both alike
                    results[depth].append(one_sync(home, args, depth, r, warm))
        finally:
            warm.close()
            stop_embedded(home)
    print(f"{args.records} records, page size {args.page_size}, rate {args.rate}/s, ~{args.fail_rate:.0%} failing")
    print(f"ideal: {needed} calls / {args.rate}/s = {ideal:.1f} s")
    for depth, label in ((2, "fetch-ahead 2 (default)"), (0, "no fetch-ahead")):
        rs = results[depth]
        t = statistics.median(x["elapsed"] for x in rs)
        print(
            f"{label:24s} {t:6.1f} s = {t / ideal:.2f}x ideal; calls {statistics.median(x['requests'] for x in rs):.0f}"
            f" (failed {statistics.median(x['failed'] for x in rs):.0f}, throttled by the server"
            f" {statistics.median(x['throttled'] for x in rs):.0f}); most calls in any 1 s:"
            f" {max(x['max_1s'] for x in rs):.0f} (limit {args.rate:g})"
        )


if __name__ == "__main__":
    main()
