"""Confluence sync against an emulated Confluence Cloud API on 127.0.0.1, the real store and model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, timedelta

import pytest

from connectors.confluence import ConfluenceSettings, ConfluenceSource
from connectors.confluence_site import cql_date
from connectors.errors import MalformedPayloadError, RequestRejectedError, SourceError
from connectors.http import HttpPolicy
from flows.runtime import Services
from tests.support.db import committed_documents
from tests.support.fake_confluence import EMAIL, TOKEN, FakeConfluence, serve_confluence
from tests.support.fake_mediawiki import flaky
from tests.support.httpserver import Logged, Reply, ScriptedServer
from tests.support.remote import sync
from vectorstore import cursors, ledger, search

FAST = HttpPolicy(backoff_base=0.01, backoff_max=0.05, max_attempts=10, breaker_threshold=50, read_timeout=2.0)
ANIMALS = ["otter", "heron", "badger", "lynx", "walrus", "ibis", "marmot", "tapir", "okapi", "quokka"]
SEARCH = "/wiki/rest/api/content/search"

Site = tuple[FakeConfluence, ScriptedServer]
Make = Callable[..., ConfluenceSource]


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("CONFLUENCE_EMAIL", EMAIL)
    monkeypatch.setenv("CONFLUENCE_TOKEN", TOKEN)
    fake = FakeConfluence()
    fake.add_space("ENG")
    fake.add_space("OPS")
    with serve_confluence(fake) as srv:
        yield fake, srv


@pytest.fixture
def make(site: Site) -> Iterator[Make]:
    """Sources built as the CLI builds them: credentials from the environment, a client of their own."""
    made: list[ConfluenceSource] = []

    def build(**settings: object) -> ConfluenceSource:
        config = {
            "name": "kb",
            "base_url": f"{site[1].url}/wiki",
            "spaces": ["ENG", "OPS"],
            "page_size": 10,
            "http": FAST.model_dump(),
            **settings,
        }
        made.append(ConfluenceSource(ConfluenceSettings.model_validate(config)))
        return made[-1]

    yield build
    for source in made:
        source.close()


def fill(fake: FakeConfluence, space: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        animal = ANIMALS[i % len(ANIMALS)]
        body = (
            f"<h2>The {animal} of {space}</h2><p>The <strong>{animal}</strong> number {i} lives near "
            f'<ac:link><ri:page ri:content-title="River {i}" /></ac:link>.</p>'
            f'<ac:structured-macro ac:name="info"><ac:parameter ac:name="title">Note</ac:parameter>'
            f"<ac:rich-text-body><p>It eats fish number {i * 7} every morning.</p></ac:rich-text-body>"
            f"</ac:structured-macro>"
        )
        ids.append(fake.create(space, f"{space} page {i:03d} {animal}", body).id)
    return ids


def best(services: Services, query: str) -> search.SearchHit:
    return search.search(services.conn, services.embedder.embed([query])[0], 1, text=query)[0]


def status_of(services: Services, *page_ids: str) -> list[str]:
    source_id = ledger.ensure_source(services.conn, "kb", "confluence")
    entries = ledger.entries(services.conn, source_id, [f"page/{p}" for p in page_ids])
    return [entries[f"page/{p}"].status for p in page_ids]


def test_full_then_incremental_sync_shows_edits_trashes_archives_and_deletions(
    site: Site, make: Make, services: Services
) -> None:
    fake, srv = site
    eng = fill(fake, "ENG", 23)
    ops = fill(fake, "OPS", 12)
    fake.fault = flaky(0.15, seed=5)
    counts = sync(services, "kb", make())
    assert (counts.committed, counts.quarantined) == (35, 0) and committed_documents(services) == 35
    source_id = ledger.ensure_source(services.conn, "kb", "confluence")
    assert (cursors.load_cursor(services.conn, source_id) or {})["mode"] == "incremental"
    assert any("cursor" in c.query for c in srv.calls(f"/wiki/api/v2/spaces/{fake.spaces['ENG']}/pages"))
    hit = best(services, "the otter of ENG eats fish")
    assert hit.uri.startswith(f"{srv.url}/wiki/spaces/ENG/pages/") and "Note" not in hit.text

    fake.fault = lambda _: None
    fake.edit(eng[3], body="<p>The lynx now collects <em>shiny pebbles</em> on the riverbank.</p>")
    fake.trash(eng[4])
    fake.archive(eng[5])
    fake.delete(ops[0])
    fake.edit(ops[1], title="Renamed badger burrow")
    new = fake.create("OPS", "Hot springs", "<p>A capybara bathes in the hot spring.</p>")
    before = len(srv.calls(SEARCH))
    again = sync(services, "kb", make())
    assert (again.committed, again.deleted, again.quarantined) == (3, 3, 0)  # edited, renamed, new
    assert committed_documents(services) == 33
    assert status_of(services, eng[4], eng[5], ops[0], eng[3]) == ["deleted", "deleted", "deleted", "committed"]
    assert "shiny pebbles" in best(services, "lynx collects shiny pebbles").text
    assert best(services, "Renamed badger burrow").title == "Renamed badger burrow"
    capybara = best(services, "capybara bathes in the hot spring")
    assert capybara.title == "Hot springs"
    assert capybara.uri == f"{srv.url}/wiki/spaces/OPS/pages/{new.id}/Hot+springs"
    searches = srv.calls(SEARCH)[before:]
    cql = [c.query["cql"][0] for c in searches if "cql" in c.query]
    assert cql and all("order by lastmodified asc" in q for q in cql)
    assert any("cursor" in c.query for c in searches)  # v1 _links.next (relative to the site) followed

    quiet = sync(services, "kb", make())
    assert (quiet.committed, quiet.deleted) == (0, 0)
    assert quiet.unchanged > 0  # the overlap serves recent pages again; their hashes make them free


def test_a_base_url_without_wiki_works_the_same(site: Site, make: Make, services: Services) -> None:
    fake, srv = site
    fill(fake, "OPS", 14)
    counts = sync(services, "kb", make(base_url=srv.url, spaces=["OPS"]))
    assert counts.committed == 14
    assert best(services, "the tapir of OPS").uri.startswith(f"{srv.url}/wiki/spaces/OPS/pages/")
    fake.edit(fake.create("OPS", "Fresh", "<p>First words.</p>").id, body="<p>A narwhal surfaces.</p>")
    again = sync(services, "kb", make(base_url=f"{srv.url}/", spaces=["OPS"]))
    assert again.committed == 1 and best(services, "narwhal surfaces").title == "Fresh"


def test_a_failed_sync_resumes_without_refetching_committed_pages(site: Site, make: Make, services: Services) -> None:
    fake, srv = site
    fill(fake, "ENG", 15)
    fill(fake, "OPS", 15)
    eng_path = f"/wiki/api/v2/spaces/{fake.spaces['ENG']}/pages"
    ops_path = f"/wiki/api/v2/spaces/{fake.spaces['OPS']}/pages"
    budget = {"ok": 2}

    def dies_after_two_listings(req: Logged) -> Reply | None:
        if req.path in (eng_path, ops_path):
            if budget["ok"] == 0:
                return Reply(500, {"message": "down"})
            budget["ok"] -= 1
        return None

    fake.fault = dies_after_two_listings
    with pytest.raises(SourceError):
        sync(services, "kb", make(http={**FAST.model_dump(), "max_attempts": 2}))
    assert committed_documents(services) == 15
    before = len(srv.calls())

    fake.fault = lambda _: None
    counts = sync(services, "kb", make())
    assert counts.committed == 15 and committed_documents(services) == 30
    resumed = srv.calls()[before:]
    listings = [c for c in resumed if c.path in (eng_path, ops_path)]
    assert [c.path for c in listings] == [ops_path, ops_path]  # ENG's pages are not fetched again
    assert "cursor" not in listings[0].query and "cursor" in listings[1].query
    assert not [c for c in resumed if c.path == SEARCH]  # the listing's start time came with the cursor


def test_a_saved_cursor_the_site_no_longer_takes_restarts_the_listing(
    site: Site, make: Make, services: Services
) -> None:
    fake, srv = site
    fill(fake, "ENG", 25)
    listings = {"ok": 1}

    def dies_after_one_listing(req: Logged) -> Reply | None:
        if req.path.endswith("/pages"):
            if listings["ok"] == 0:
                return Reply(503, {"message": "down"})
            listings["ok"] -= 1
        return None

    fake.fault = dies_after_one_listing
    with pytest.raises(SourceError):
        sync(services, "kb", make(spaces=["ENG"], http={**FAST.model_dump(), "max_attempts": 1}))
    assert committed_documents(services) == 10
    fake.fault = lambda _: None
    fake.expire_cursors()
    before = len(srv.calls())
    counts = sync(services, "kb", make(spaces=["ENG"]))
    assert (counts.committed, counts.unchanged) == (15, 10) and committed_documents(services) == 25
    refused, *rest = [c for c in srv.calls()[before:] if c.path.endswith("/pages")]
    assert "cursor" in refused.query and "cursor" not in rest[0].query and len(rest) == 3


def test_malformed_and_empty_pages_are_quarantined_and_the_cursor_moves_on(
    site: Site, make: Make, services: Services
) -> None:
    fake, srv = site
    ids = fill(fake, "ENG", 5)
    empty = fake.create("ENG", "Just a table of contents", '<ac:structured-macro ac:name="toc" />').id
    good = fake.handler()

    def damaged(req: Logged) -> Reply:
        reply = good(req)
        for page in reply.body.get("results", []) if isinstance(reply.body, dict) else []:
            if page.get("id") == ids[1]:
                del page["body"]
            elif page.get("id") == ids[2]:
                del page["id"]
        return reply

    srv.route(f"/wiki/api/v2/spaces/{fake.spaces['ENG']}/pages", damaged)
    counts = sync(services, "kb", make(spaces=["ENG"]))
    assert (counts.seen, counts.committed, counts.quarantined) == (5, 3, 2)
    reasons = {row["external_id"]: row["reason"] for row in ledger.quarantined(services.conn)}
    assert reasons == {f"page/{ids[1]}": "malformed", f"page/{empty}": "no_text"}
    source_id = ledger.ensure_source(services.conn, "kb", "confluence")
    assert (cursors.load_cursor(services.conn, source_id) or {})["mode"] == "incremental"


def test_rejected_credentials_surface_the_provider_message_at_once(
    site: Site, make: Make, monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    fake, srv = site
    fill(fake, "ENG", 3)
    monkeypatch.setenv("CONFLUENCE_TOKEN", "revoked-token")
    with pytest.raises(RequestRejectedError, match="Client must be authenticated") as err:
        sync(services, "kb", make())
    assert err.value.status == 401 and "revoked-token" not in str(err.value)
    assert len(srv.calls()) == 1  # a rejection is not retried


def test_a_reconcile_catches_purged_and_restored_pages(site: Site, make: Make, services: Services) -> None:
    fake, _ = site
    ids = fill(fake, "ENG", 8)
    assert sync(services, "kb", make()).committed == 8
    fake.clock += timedelta(hours=2)  # later changes leave the first pages out of the incremental window
    fake.edit(ids[7], body="<p>The quokka moved to a new island.</p>")
    fake.trash(ids[0])
    later = sync(services, "kb", make())
    assert (later.committed, later.deleted) == (1, 1)

    fake.restore(ids[0])  # back from the trash without an edit: no search shows it
    fake.purge(ids[1])  # gone without passing a listing we read
    quiet = sync(services, "kb", make())
    assert (quiet.committed, quiet.deleted) == (0, 0)
    reconciled = sync(services, "kb", make(reconcile_hours=0))
    assert (reconciled.committed, reconciled.deleted) == (1, 1)
    assert status_of(services, ids[0], ids[1]) == ["committed", "deleted"]
    assert committed_documents(services) == 7

    again = sync(services, "kb", make(reconcile_hours=0))
    assert (again.committed, again.deleted, again.unchanged) == (0, 0, 7)


def test_the_overlap_catches_an_edit_the_search_index_served_late(site: Site, make: Make, services: Services) -> None:
    fake, srv = site
    ids = fill(fake, "ENG", 4)
    sync(services, "kb", make(spaces=["ENG"]))
    fake.edit(ids[0], body="<p>A pangolin curls into a ball.</p>")
    fake.edit(ids[1], body="<p>A wombat digs a burrow.</p>")
    good = fake.handler()

    def index_lags(req: Logged) -> Reply:
        reply = good(req)
        if isinstance(reply.body, dict):
            reply.body["results"] = [p for p in reply.body["results"] if p["id"] != ids[0]]
        return reply

    srv.route(SEARCH, index_lags)
    assert sync(services, "kb", make(spaces=["ENG"])).committed == 1  # the wombat only
    srv.route(SEARCH, good)
    late = sync(services, "kb", make(spaces=["ENG"]))
    assert late.committed == 1 and "pangolin" in best(services, "pangolin curls into a ball").text
    window = cql_date(fake.pages[ids[1]].when - timedelta(minutes=10), UTC)  # from the newest change seen
    assert f'lastmodified >= "{window}"' in srv.calls(SEARCH)[-1].query["cql"][0]


def test_unknown_answers_and_spaces_fail_clearly(site: Site, make: Make) -> None:
    fake, srv = site
    srv.route("/wiki/api/v2/spaces", lambda _: Reply(200, {"data": []}))
    with pytest.raises(MalformedPayloadError, match="space ENG: the answer has no results list"):
        list(make().batches(None))

    fake.mount(srv)
    with pytest.raises(RequestRejectedError, match="space 'NOPE' not found"):
        list(make(spaces=["ENG", "NOPE"]).batches(None))

    fill(fake, "ENG", 1)
    off_site = {"results": [], "_links": {"next": "https://elsewhere.example/wiki/api/v2/pages?cursor=x"}}
    srv.route(f"/wiki/api/v2/spaces/{fake.spaces['ENG']}/pages", lambda _: Reply(200, off_site))
    with pytest.raises(MalformedPayloadError, match="leaves the site"):
        list(make(spaces=["ENG"]).batches(None))
