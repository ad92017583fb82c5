"""Salesforce sync against an emulated REST API on 127.0.0.1, the real store and model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectors.errors import RequestRejectedError, SourceError
from connectors.http import HttpPolicy, ResilientClient
from connectors.salesforce import SalesforceSettings, SalesforceSource
from flows.runtime import Services
from tests.support.db import committed_documents
from tests.support.fake_mediawiki import flaky
from tests.support.fake_salesforce import TOKEN, VERSION, FakeSalesforce, sf_error
from tests.support.httpserver import Logged, Reply, ScriptedServer, serve
from tests.support.remote import sync
from vectorstore import cursors, ledger, search

FAST = HttpPolicy(backoff_base=0.01, backoff_max=0.05, max_attempts=10, breaker_threshold=50)
QUERY_ALL = f"/services/data/{VERSION}/queryAll"


@pytest.fixture
def org() -> Iterator[tuple[FakeSalesforce, ScriptedServer]]:
    fake = FakeSalesforce(batch_size=10)  # the API's smallest batch is 200; the paging logic is the same
    with serve() as srv:
        fake.mount(srv)
        yield fake, srv


def salesforce(
    srv: ScriptedServer, policy: HttpPolicy = FAST, token: str = TOKEN, **settings: object
) -> SalesforceSource:
    cfg = SalesforceSettings.model_validate({"name": "sf", "base_url": srv.url, **settings})
    client = ResilientClient("sf", policy, base_url=srv.url, headers={"Authorization": f"Bearer {token}"})
    return SalesforceSource(cfg, client)


def locator_calls(srv: ScriptedServer, since: int = 0) -> list[Logged]:
    return [c for c in srv.log[since:] if "/query/" in c.path]


def query_calls(srv: ScriptedServer, since: int = 0) -> list[Logged]:
    return [c for c in srv.log[since:] if c.path == QUERY_ALL]


def accounts(fake: FakeSalesforce, n: int) -> list[str]:
    return [
        fake.upsert("Account", Name=f"Company {i}", Industry="Shipbuilding", Description=f"Builds hull {i}.")
        for i in range(n)
    ]


def cursor(services: Services) -> dict[str, Any]:
    return cursors.load_cursor(services.conn, ledger.ensure_source(services.conn, "sf", "salesforce")) or {}


def test_sync_pages_through_locators_and_propagates_edits_and_deletions(
    org: tuple[FakeSalesforce, ScriptedServer], services: Services
) -> None:
    fake, srv = org
    ids = accounts(fake, 35)
    for name in ("Grace Hopper", "Ada Lovelace", "Margaret Hamilton", "Katherine Johnson"):
        fake.upsert("Contact", Name=name, Title="Engineer", Account={"Name": "Company 3"})
    fake.upsert("Case", CaseNumber="00001001", Subject="Hull breach", Description="Water in the engine room.")
    fake.fault = flaky(0.15, seed=3)
    first = salesforce(srv)
    counts = sync(services, "sf", first)
    assert counts.committed == 40 and committed_documents(services) == 40
    assert first.stats.retries > 0  # the faults really happened
    assert len(locator_calls(srv)) >= 3  # 35 accounts in pages of 10
    name = "Margaret Hamilton"
    contact = search.search(services.conn, services.embedder.embed([name])[0], 1, text=name)[0]
    assert contact.title == name and "Account.Name: Company 3" in contact.text

    fake.fault = lambda _: None
    fake.upsert("Account", ids[5], Description="Now builds icebreakers with double hulls.")
    fake.delete("Account", ids[6])
    fake.upsert("Opportunity", Name="Fleet renewal", StageName="Prospecting", Amount=1_200_000)
    before = len(srv.log)
    again = sync(services, "sf", salesforce(srv))
    assert (again.committed, again.deleted) == (2, 1)
    account_query = next(c.query["q"][0] for c in query_calls(srv, before) if "FROM Account" in c.query["q"][0])
    assert " WHERE SystemModstamp >= " in account_query
    source_id = ledger.ensure_source(services.conn, "sf", "salesforce")
    assert ledger.entries(services.conn, source_id, [f"Account/{ids[6]}"])[f"Account/{ids[6]}"].status == "deleted"
    query = "icebreakers with double hulls"
    hit = search.search(services.conn, services.embedder.embed([query])[0], 1, text=query)[0]
    assert hit.uri == f"{srv.url}/lightning/r/Account/{ids[5]}/view"
    assert committed_documents(services) == 40

    quiet = sync(services, "sf", salesforce(srv))
    assert (quiet.committed, quiet.deleted) == (0, 0)  # the boundary records came again, unchanged


def test_an_expired_locator_restarts_the_query_from_the_committed_stamp(
    org: tuple[FakeSalesforce, ScriptedServer], services: Services
) -> None:
    fake, srv = org
    accounts(fake, 30)
    expired = {"done": False}

    def idle_too_long(req: Logged) -> Reply | None:
        if "/query/" in req.path and not expired["done"]:
            expired["done"] = True
            fake.expire_locators()  # the handler now answers 400 INVALID_QUERY_LOCATOR
        return None

    fake.fault = idle_too_long
    counts = sync(services, "sf", salesforce(srv, objects=["Account"]))
    assert counts.committed == 30 and committed_documents(services) == 30
    assert counts.unchanged == 1  # the 10th account, stamped at the boundary, came again
    first, restarted = query_calls(srv)
    assert "WHERE" not in first.query["q"][0]
    assert "WHERE SystemModstamp >= 2026-01-01T00:00:10Z" in restarted.query["q"][0]
    assert cursor(services) == {"Account": {"since": "2026-01-01T00:00:30Z", "next": None}}


def other_session(locator: str) -> Callable[[Logged], Reply | None]:
    """A locator belongs to the session that opened it: under a new token, the old one answers 401."""

    def fault(req: Logged) -> Reply | None:
        return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid") if req.path == locator else None

    return fault


@pytest.mark.parametrize("meanwhile", ["nothing", "locators_expired", "new_session"])
def test_a_failed_sync_resumes_from_the_saved_cursor_without_refetching_committed_pages(
    org: tuple[FakeSalesforce, ScriptedServer], services: Services, meanwhile: str
) -> None:
    fake, srv = org
    accounts(fake, 50)
    budget = {"ok": 2}

    def dies_after_two_more(req: Logged) -> Reply | None:
        if "/query/" in req.path:
            if budget["ok"] == 0:
                return sf_error(503, "SERVER_UNAVAILABLE", "down for maintenance")
            budget["ok"] -= 1
        return None

    fake.fault = dies_after_two_more
    policy = FAST.model_copy(update={"max_attempts": 2})
    with pytest.raises(SourceError, match="down for maintenance"):
        sync(services, "sf", salesforce(srv, policy, objects=["Account"]))
    assert committed_documents(services) == 30
    saved = cursor(services)["Account"]
    assert saved == {"since": "2026-01-01T00:00:30Z", "next": saved["next"]} and saved["next"]

    fake.fault = lambda _: None
    if meanwhile == "locators_expired":
        fake.expire_locators()
    elif meanwhile == "new_session":
        fake.fault = other_session(str(saved["next"]))
    before = len(srv.log)
    counts = sync(services, "sf", salesforce(srv, objects=["Account"]))
    assert counts.committed == 20 and committed_documents(services) == 50
    resumed = srv.log[before:]
    assert resumed[0].path == saved["next"]
    if meanwhile == "nothing":
        assert len(resumed) == 2 and not query_calls(srv, before)  # the two pages left, nothing refetched
    else:
        # the locator is gone: one query from the committed stamp, 21 records (one at the boundary)
        [again] = query_calls(srv, before)
        assert "SystemModstamp >= 2026-01-01T00:00:30Z" in again.query["q"][0]
        assert counts.unchanged == 1 and len(resumed) == 1 + 3


def test_malformed_records_are_quarantined_and_the_cursor_moves_on(
    org: tuple[FakeSalesforce, ScriptedServer], services: Services
) -> None:
    fake, srv = org
    ids = accounts(fake, 4)
    empty = fake.upsert("Account", Name=None)
    good = fake.handler()

    def broken_rows(req: Logged) -> Reply:
        reply = good(req)
        records = reply.body.get("records", []) if isinstance(reply.body, dict) else []
        for row in records:
            if row["Id"] == ids[2]:
                row["Industry"] = ["Ships", "Boats"]  # not a field value
        records.append({"attributes": {"type": "Account"}, "Name": "no id"})
        return reply

    srv.route(QUERY_ALL, broken_rows)
    counts = sync(services, "sf", salesforce(srv, objects=["Account"]))
    assert (counts.committed, counts.quarantined) == (3, 2)
    reasons = {row["external_id"]: row["reason"] for row in ledger.quarantined(services.conn)}
    assert reasons == {f"Account/{ids[2]}": "malformed", f"Account/{empty}": "no_text"}
    assert cursor(services) == {"Account": {"since": "2026-01-01T00:00:05Z", "next": None}}

    again = sync(services, "sf", salesforce(srv, objects=["Account"]))
    assert (again.committed, again.quarantined, again.still_quarantined) == (0, 0, 1)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("session", "HTTP 401: Session expired or invalid"),
        ("token", "HTTP 401: Session expired or invalid"),
        ("schema", "HTTP 400: No such column 'Revenue__c' on entity 'Account'"),
    ],
)
def test_a_rejected_request_surfaces_the_provider_message(
    org: tuple[FakeSalesforce, ScriptedServer], services: Services, setup: str, message: str
) -> None:
    fake, srv = org
    accounts(fake, 3)
    if setup == "session":
        fake.session_valid = False
    elif setup == "schema":
        fake.schema = {"Account": {"Name", "Industry"}}
    token = "00Dstale!token" if setup == "token" else TOKEN
    with pytest.raises(RequestRejectedError, match=message):
        sync(services, "sf", salesforce(srv, token=token, objects={"Account": ["Name", "Revenue__c"]}))
    assert len(srv.log) == 1  # rejected at once, not retried
    assert committed_documents(services) == 0
