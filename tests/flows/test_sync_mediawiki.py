"""Remote sync through the resilient layer: an emulated MediaWiki on 127.0.0.1, the real store and model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.errors import CircuitOpenError, SourceError
from connectors.http import HttpPolicy
from connectors.mediawiki import MediaWikiSettings, MediaWikiSource, wikitext_to_text
from flows.runtime import Services
from tests.support.db import committed_documents
from tests.support.fake_mediawiki import FakeWiki, flaky
from tests.support.httpserver import Logged, Reply, ScriptedServer, serve
from tests.support.remote import sync
from vectorstore import cursors, ledger, search

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "read_timeout": 2.0}

ANIMALS = ["otter", "heron", "badger", "lynx", "walrus", "ibis", "marmot", "tapir", "okapi", "quokka"]


def fill(wiki: FakeWiki, n: int) -> None:
    for i in range(n):
        animal = ANIMALS[i % len(ANIMALS)]
        wiki.add(
            f"Page {i:04d} {animal}",
            f"'''The {animal} number {i}''' lives near [[River {i}|the river]]. {{{{Infobox|x=1}}}}\n"
            f"== Habits ==\nIt eats fish number {i * 7} every morning.",
        )


@pytest.fixture
def wiki_server() -> Iterator[tuple[FakeWiki, ScriptedServer]]:
    wiki = FakeWiki()
    with serve() as srv:
        srv.route("/w/api.php", wiki.handler(srv.url))
        yield wiki, srv


def source(srv: ScriptedServer, **http: object) -> MediaWikiSource:
    settings = MediaWikiSettings(
        name="wiki", base_url=f"{srv.url}/w/api.php", page_size=10, http=HttpPolicy.model_validate({**FAST, **http})
    )
    return MediaWikiSource(settings)


def test_wikitext_becomes_clean_text() -> None:
    text = wikitext_to_text("'''Bold''' and [[Target|shown]] {{Infobox|a=1}}\n== Head ==\nBody <ref>cite</ref>.")
    assert "Bold and shown" in text and "Head" in text and "Body" in text
    assert "{{" not in text and "[[" not in text and "'''" not in text


def test_full_then_incremental_sync_with_edits_moves_and_deletions(
    wiki_server: tuple[FakeWiki, ScriptedServer], services: Services
) -> None:
    wiki, srv = wiki_server
    fill(wiki, 25)
    counts = sync(services, "wiki", source(srv))
    assert (counts.committed, counts.quarantined) == (25, 0)
    source_id = ledger.ensure_source(services.conn, "wiki", "mediawiki")
    assert (cursors.load_cursor(services.conn, source_id) or {})["mode"] == "incremental"

    wiki.edit(3, "The otter number 3 now collects shiny pebbles on the riverbank.")
    wiki.delete(4)
    wiki.move(5, "Renamed badger burrow")
    wiki.add("Brand new page", "A capybara bathes in the hot spring.")
    again = sync(services, "wiki", source(srv))
    assert again.deleted == 1 and again.committed == 3  # edited, moved (title changed), new
    assert committed_documents(services) == 25

    def best(query: str) -> search.SearchHit:
        return search.search(services.conn, services.embedder.embed([query])[0], 1, text=query)[0]

    assert "shiny pebbles" in best("otter collects shiny pebbles").text
    assert best("capybara hot spring").title == "Brand new page"
    assert best("Renamed badger burrow").title == "Renamed badger burrow"
    assert ledger.entries(services.conn, source_id, ["4"])["4"].status == "deleted"

    quiet = sync(services, "wiki", source(srv))
    assert quiet.committed == 0 and quiet.deleted == 0


def test_throttled_flaky_source_ingests_every_record_once_within_the_rate(
    wiki_server: tuple[FakeWiki, ScriptedServer], services: Services
) -> None:
    wiki, srv = wiki_server
    fill(wiki, 200)
    wiki.fault = flaky(0.2)
    rate = 25.0
    counts = sync(services, "wiki", source(srv, rate_per_second=rate, burst=1, max_attempts=10))
    assert counts.committed == 200 and committed_documents(services) == 200
    rows = services.conn.execute("SELECT count(*) AS n, count(DISTINCT external_id) AS d FROM documents").fetchone()
    assert rows == {"n": 200, "d": 200}
    times = sorted(c.at for c in srv.calls("/w/api.php"))
    assert len(times) > 20
    for i, start in enumerate(times):
        # tokens are taken client-side; arrival at the server may bunch by a request's transit jitter
        assert sum(1 for t in times[i:] if t - start < 1.0) <= rate + 2


def test_a_crashed_sync_resumes_after_the_last_committed_batch(
    wiki_server: tuple[FakeWiki, ScriptedServer], services: Services
) -> None:
    wiki, srv = wiki_server
    fill(wiki, 60)
    budget = {"ok": 3}

    def dies_after_three(req: Logged) -> Reply | None:
        if req.query.get("generator") == ["allpages"]:
            if budget["ok"] == 0:
                return Reply(500, {"error": "down"})
            budget["ok"] -= 1
        return None

    wiki.fault = dies_after_three
    with pytest.raises(SourceError):
        sync(services, "wiki", source(srv, max_attempts=2, breaker_threshold=2))
    assert committed_documents(services) == 30
    listed_before = len([c for c in srv.calls() if c.query.get("generator") == ["allpages"]])

    wiki.fault = lambda _: None
    counts = sync(services, "wiki", source(srv))
    assert counts.committed == 30 and committed_documents(services) == 60
    listings = [c for c in srv.calls() if c.query.get("generator") == ["allpages"]][listed_before:]
    assert "gapcontinue" in listings[0].query  # resumed, not started over
    assert len(listings) == 3


def test_a_source_that_is_down_opens_the_breaker_within_a_bounded_number_of_calls(
    wiki_server: tuple[FakeWiki, ScriptedServer], services: Services
) -> None:
    wiki, srv = wiki_server
    fill(wiki, 5)
    wiki.fault = lambda _: Reply(503, b"down")
    with pytest.raises((CircuitOpenError, SourceError)):
        sync(services, "wiki", source(srv, max_attempts=10, breaker_threshold=4))
    assert len(srv.calls()) == 4
