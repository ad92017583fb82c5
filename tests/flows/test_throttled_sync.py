"""Acceptance: a 2,000-record source behind a server that throttles at a per-second limit and fails ~20% of
the calls (429 with and without Retry-After, 5xx, resets, bodies cut short, slow answers) is ingested with
every record exactly once and without ever exceeding the configured rate, as measured from the server's log.
(The time against the ideal is measured in bench/throttled_sync.py, not asserted here.)"""

from __future__ import annotations

import pytest

from connectors.http import HttpPolicy, ResilientClient
from connectors.hubspot import HubSpotSettings, HubSpotSource
from flows.runtime import Services
from tests.support.db import committed_documents
from tests.support.embedders import CountingEmbedder
from tests.support.fake_hubspot import FakeHubSpot
from tests.support.hostile import Hostile, max_in_window
from tests.support.httpserver import serve
from tests.support.remote import sync

RATE = 8.0
BURST = 2


@pytest.mark.slow  # rate-limited by design (~9 s)
def test_two_thousand_records_through_a_throttling_flaky_server_exactly_once(
    services: Services, counting_embedder: CountingEmbedder
) -> None:
    fake = FakeHubSpot()
    for i in range(2000):
        fake.upsert("companies", str(i + 1), name=f"Company {i:04d}", description=f"Makes widget model W{i:04d}.")
    hostile = Hostile(fake.handler(), limit_per_second=RATE, fail_rate=0.2)
    policy = HttpPolicy(
        rate_per_second=RATE, burst=BURST, backoff_base=0.05, backoff_max=1.0, max_attempts=12, breaker_threshold=30
    )
    with serve() as srv:
        srv.route("/crm/v3/objects/companies", hostile)
        srv.route("/crm/v3/objects/companies/search", hostile)
        cfg = HubSpotSettings(name="crm", base_url=srv.url, objects=["companies"], page_size=100)
        client = ResilientClient("crm", policy, base_url=srv.url, headers={"Authorization": "Bearer t"})
        counts = sync(services, "crm", HubSpotSource(cfg, client))
        arrivals = [c.at for c in srv.calls()]

    assert hostile.failed > 0  # the faults really happened
    assert counts.committed == 2000 and committed_documents(services) == 2000
    assert counts.quarantined == 0
    assert sum(counting_embedder.calls) == 2000  # each record embedded once: no replayed page re-embedded
    rows = services.conn.execute(
        "SELECT count(*) AS chunks, count(DISTINCT document_id) AS docs FROM chunks"
    ).fetchone()
    assert rows is not None and rows["chunks"] == 2000 and rows["docs"] == 2000
    # A token bucket allows at most burst + rate * T calls in any T seconds; +1 for arrival jitter on loopback.
    for window in (1.0, 3.0):
        assert max_in_window(arrivals, window) <= BURST + RATE * window + 1, window
    assert counts.http_requests == len(arrivals)
