"""HubSpot sync against an emulated CRM v3 API on 127.0.0.1, the real store and model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.errors import RequestRejectedError
from connectors.http import HttpPolicy, ResilientClient
from connectors.hubspot import HubSpotSettings, HubSpotSource, record_text
from flows.runtime import Services
from tests.support.db import committed_documents
from tests.support.fake_hubspot import FakeHubSpot
from tests.support.fake_mediawiki import flaky
from tests.support.httpserver import ScriptedServer, serve
from tests.support.remote import sync
from vectorstore import ledger, search

FAST = HttpPolicy(backoff_base=0.01, backoff_max=0.05, max_attempts=10, breaker_threshold=50)


@pytest.fixture
def crm() -> Iterator[tuple[FakeHubSpot, ScriptedServer]]:
    fake = FakeHubSpot()
    with serve() as srv:
        handler = fake.handler()
        for obj in ("contacts", "companies", "deals", "tickets", "notes"):
            srv.route(f"/crm/v3/objects/{obj}", handler)
            srv.route(f"/crm/v3/objects/{obj}/search", handler)
        yield fake, srv


def hubspot(srv: ScriptedServer, **settings: object) -> HubSpotSource:
    cfg = HubSpotSettings.model_validate(
        {"name": "crm", "base_url": srv.url, "page_size": 10, "search_cap": 30, **settings}
    )
    client = ResilientClient("crm", FAST, base_url=srv.url, headers={"Authorization": "Bearer test"})
    return HubSpotSource(cfg, client)


def test_record_text_leaves_timestamps_out() -> None:
    title, text = record_text(
        "contacts",
        {"firstname": "Ada", "lastname": "Lovelace", "email": "ada@x.org", "lastmodifieddate": "123"},
        ["firstname", "lastname", "email"],
    )
    assert title == "Ada Lovelace" and "email: ada@x.org" in text and "123" not in text


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUBSPOT_TOKEN", raising=False)
    with pytest.raises(RequestRejectedError, match="HUBSPOT_TOKEN"):
        HubSpotSource(HubSpotSettings(name="crm"))


def test_sync_pages_past_the_search_cap_and_propagates_edits_and_archives(
    crm: tuple[FakeHubSpot, ScriptedServer], services: Services
) -> None:
    fake, srv = crm
    fake.cap = 30  # the real API stops at 10,000 results per query; the restart logic is the same
    for i in range(75):
        fake.upsert(
            "companies", str(i + 1), name=f"Company {i}", industry="Shipbuilding", description=f"Builds hull {i}."
        )
    fake.upsert("contacts", "9001", firstname="Grace", lastname="Hopper", email="grace@navy.mil", jobtitle="Admiral")
    fake.fault = flaky(0.15, seed=3)
    counts = sync(services, "crm", hubspot(srv, objects=["companies", "contacts"]))
    assert counts.committed == 76 and committed_documents(services) == 76
    searches = [c for c in srv.calls() if c.path.endswith("/search")]
    assert any(b'"after"' not in c.body for c in searches[1:])  # a restarted query after the cap

    fake.fault = lambda _: None
    fake.upsert("companies", "5", description="Now builds icebreakers with double hulls.")
    fake.archive("companies", "6")
    again = sync(services, "crm", hubspot(srv, objects=["companies", "contacts"]))
    assert again.committed == 1 and again.deleted == 1
    source_id = ledger.ensure_source(services.conn, "crm", "hubspot")
    assert ledger.entries(services.conn, source_id, ["companies/6"])["companies/6"].status == "deleted"
    hit = search.search(
        services.conn,
        services.embedder.embed(["icebreakers with double hulls"])[0],
        1,
        text="icebreakers with double hulls",
    )[0]
    assert hit.uri == "hubspot://companies/5"
    assert committed_documents(services) == 75
