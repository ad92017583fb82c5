"""The MediaWiki connector against a real MediaWiki 1.39 (Debian's package, SQLite, PHP's built-in server),
with the real store and model: a full sync, then edits, creations, deletions, restores and moves made through
the wiki's own Action API, and what the wiki's recentchanges really reports about them.

The wiki is installed and seeded once per module; each test works on its own copy (tests/support/realwiki.py).
Missing packages fail these tests with the command that installs them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.errors import MalformedPayloadError
from connectors.http import HttpPolicy
from connectors.mediawiki import MediaWikiSettings, MediaWikiSource
from flows.runtime import Services
from flows.sources import sync_remote
from tests.support import realwiki
from tests.support.realwiki import RealWiki, WikiInstall
from vectorstore import cursors, ledger, search

pytestmark = pytest.mark.integration

ANIMALS = [
    ("Otter", "river", "fish", "slides down muddy banks"),
    ("Heron", "marsh", "frogs", "stands motionless for an hour"),
    ("Badger", "woodland", "earthworms", "digs setts with many chambers"),
    ("Lynx", "taiga", "hares", "follows tracks through deep snow"),
    ("Walrus", "arctic coast", "clams", "hauls out on floating ice"),
    ("Ibis", "wetland", "crayfish", "probes mud with a curved bill"),
    ("Marmot", "alpine meadow", "grasses", "whistles to warn the colony"),
    ("Tapir", "rainforest", "fallen fruit", "swims across wide rivers"),
    ("Okapi", "Ituri forest", "leaves", "cleans its ears with its tongue"),
    ("Quokka", "Rottnest Island", "succulents", "climbs low shrubs"),
]
REGIONS = ["North", "East", "South", "West"]
EXTRA_ANIMALS = 30  # variants of the ten above, so the listing needs several ``continue`` pages

LIGHTHOUSE = (
    "{{Infobox animal|name=Keeper|habitat=coast}}\n"
    "'''Lighthouse keeping''' was the trade of tending a [[lighthouse]] lamp.\n\n"
    "== Duties ==\n"
    "The keeper trimmed the wick of the paraffin lamp every evening at dusk and wound the clockwork that turned "
    "the [[Fresnel lens]].<ref>Keeper's manual, 1902</ref>\n\n"
    "== Log book ==\n"
    '{| class="wikitable"\n! Hour !! Entry\n|-\n| 18:00 || Lamp lit\n|-\n| 06:00 || Lamp out\n|}\n'
)
LANTERN = (
    "'''Lantern maintenance''': the brass lantern room needs its storm panes washed with vinegar after every gale."
)


def animal_page(i: int) -> tuple[str, str]:
    name, habitat, food, habit = ANIMALS[i % len(ANIMALS)]
    title = name if i < len(ANIMALS) else f"{name} population {i}"
    rows = "".join(f"|-\n| {region} || {(i + 3) * (k + 2) * 11}\n" for k, region in enumerate(REGIONS))
    text = (
        f"{{{{Infobox animal|name={name}|habitat={habitat}|diet={food}}}}}\n"
        f"The '''{name.lower()}''' lives in the [[{habitat}]] and eats [[{food}|{food}]]; it {habit}."
        f"<ref>Field survey {i}</ref>\n\n"
        f"== Behaviour ==\n"
        f"Survey team {i} watched this {name.lower()} for {i + 2} days. It {habit} and rests at noon.\n\n"
        f"=== Diet ===\n"
        f"Mostly {food}, taken at dawn; in winter it eats less.\n\n"
        f"== Counts ==\n"
        f'{{| class="wikitable"\n! Region !! Count\n{rows}|}}\n\n'
        f"== See also ==\n* [[{ANIMALS[(i + 1) % len(ANIMALS)][0]}]]\n\n"
        f"[[Category:Animals]]\n"
    )
    return title, text


def corpus() -> dict[str, str]:
    pages = dict(animal_page(i) for i in range(len(ANIMALS) + EXTRA_ANIMALS))
    pages["Lighthouse keeping"] = LIGHTHOUSE
    pages["Sea otter"] = "#REDIRECT [[Otter]]"  # a redirect: no content of its own
    # other namespaces, which a source of namespace 0 must ignore
    pages["Template:Infobox animal"] = (
        '{| class="infobox"\n! {{{name}}}\n|-\n| Habitat || {{{habitat|}}}\n|-\n| Diet || {{{diet|}}}\n|}'
    )
    pages["Talk:Otter"] = "Is the otter count in the North region right? The templates say so."
    pages["Help:Lantern maintenance"] = LANTERN
    pages["Category:Animals"] = "Pages about animals."
    pages["User:Admin"] = "The administrator of this test wiki."
    return pages


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> WikiInstall:
    """install.php and the seed pages, once per module; tests get copies."""
    try:
        realwiki.check_installed()
    except realwiki.MediaWikiUnavailable as err:
        pytest.fail(str(err), pytrace=False)
    started = time.perf_counter()
    template = realwiki.install(tmp_path_factory.mktemp("mediawiki") / "template")
    realwiki.import_pages(template, corpus())
    print(f"real MediaWiki installed and seeded in {time.perf_counter() - started:.1f} s")
    return template


@pytest.fixture
def wiki(seeded: WikiInstall, tmp_path: Path) -> Iterator[RealWiki]:
    with realwiki.serve(realwiki.clone(seeded, tmp_path / "wiki")) as running:
        yield running


def source(wiki: RealWiki) -> MediaWikiSource:
    settings = MediaWikiSettings(
        name="realwiki", base_url=wiki.api_url, page_size=10, http=HttpPolicy(backoff_base=0.05, max_attempts=3)
    )
    return MediaWikiSource(settings)


def documents(services: Services) -> dict[str, dict[str, Any]]:
    """The ledger of the source with each document's chunk count, by external id (the wiki's page id)."""
    rows = services.conn.execute(
        """
        SELECT d.external_id, d.title, d.uri, d.status, count(c.id) AS chunks
        FROM documents d LEFT JOIN chunks c ON c.document_id = d.id
        GROUP BY d.id ORDER BY d.id
        """
    ).fetchall()
    services.conn.commit()
    by_id = {r["external_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a page is in the ledger twice"
    return by_id


def committed(services: Services) -> dict[str, str]:
    """External id to title of every committed document that has chunks."""
    rows = documents(services).values()
    return {r["external_id"]: r["title"] for r in rows if r["status"] == "committed" and r["chunks"] > 0}


def mirrors(services: Services, wiki: RealWiki) -> dict[str, str]:
    """What the index should hold: every content page of namespace 0 as the wiki lists it itself."""
    expected = {str(pageid): title for pageid, title in wiki.content_pages(0).items()}
    assert committed(services) == expected
    return expected


def best(services: Services, query: str) -> search.SearchHit:
    return search.search(services.conn, services.embedder.embed([query])[0], 1, text=query)[0]


def test_full_sync_then_edits_creations_deletions_and_moves_reach_the_index(wiki: RealWiki, services: Services) -> None:
    counts = sync_remote(services.pipeline, "realwiki", source(wiki))
    expected = mirrors(services, wiki)
    # the seeded content pages and the installer's Main Page; no redirect, no page of another namespace
    assert len(expected) == len(ANIMALS) + EXTRA_ANIMALS + 2
    assert (counts.committed, counts.quarantined, counts.deleted) == (len(expected), 0, 0)
    assert "Sea otter" not in expected.values() and "Lantern maintenance" not in expected.values()
    source_id = ledger.ensure_source(services.conn, "realwiki", "mediawiki")
    assert (cursors.load_cursor(services.conn, source_id) or {})["mode"] == "incremental"
    listings = [uri for uri in wiki.request_log() if "generator=allpages" in uri]
    assert len(listings) == -(-len(expected) // 10)  # 10 a page, followed by ``continue``
    assert all("gapcontinue=" in uri for uri in listings[1:])

    hit = best(services, "keeper trimmed the wick of the paraffin lamp at dusk")
    assert hit.title == "Lighthouse keeping" and "Fresnel lens" in hit.text
    assert hit.uri == f"{wiki.server_url}/index.php/Lighthouse_keeping"
    assert "{{" not in hit.text and "[[" not in hit.text and "<ref>" not in hit.text

    page_id = {title: str(pageid) for pageid, title in wiki.content_pages(0).items()}
    wiki.edit("Lighthouse keeping", LIGHTHOUSE + "\n== Fog ==\nIn fog the keeper sounded the brass foghorn twice.\n")
    new_id = str(
        wiki.edit("Capybara", "The '''capybara''' bathes in the hot spring of [[Jigokudani]].", create_only=True)
    )
    wiki.delete("Walrus")
    wiki.move("Otter", "Eurasian otter")  # leaves a redirect, a new page, at "Otter"
    wiki.move("Badger", "Help:Badger", redirect=False)  # out of the synced namespace
    wiki.move("Help:Lantern maintenance", "Lantern maintenance", redirect=False)  # into it
    wiki.edit("Heron", "#REDIRECT [[Ibis]]")  # an article turned into a redirect
    wiki.delete("Ibis")
    wiki.undelete("Ibis")  # back with the same page id
    wiki.edit("Talk:Otter", "Moved to Eurasian otter, see there.")  # another namespace: ignored

    again = sync_remote(services.pipeline, "realwiki", source(wiki))
    expected = mirrors(services, wiki)
    lantern_id = str(wiki.page("Lantern maintenance")["pageid"])
    # re-ingested: the edit, the new page, the renamed page (its title is part of its text), the page moved in
    assert again.committed == 4 and again.quarantined == 0
    # deleted: the deleted page, the page moved out, the page turned into a redirect
    assert again.deleted == 3
    rows = documents(services)
    for gone in ("Walrus", "Badger", "Heron"):
        assert rows[page_id[gone]]["status"] == "deleted" and rows[page_id[gone]]["chunks"] == 0, gone
    assert expected[new_id] == "Capybara" and expected[lantern_id] == "Lantern maintenance"
    assert expected[page_id["Otter"]] == "Eurasian otter"  # a move keeps the page id
    assert rows[page_id["Otter"]]["uri"] == f"{wiki.server_url}/index.php/Eurasian_otter"
    redirect = wiki.page("Otter")
    assert redirect.get("redirect") and str(redirect["pageid"]) not in rows  # the redirect left behind
    assert rows[page_id["Ibis"]]["status"] == "committed"  # deleted and restored within one sync

    assert "foghorn" in best(services, "keeper sounded the brass foghorn in fog").text
    assert best(services, "capybara bathes in a hot spring").title == "Capybara"
    assert best(services, "wash the storm panes of the lantern room with vinegar").title == "Lantern maintenance"

    quiet = sync_remote(services.pipeline, "realwiki", source(wiki))
    assert (quiet.committed, quiet.deleted, quiet.quarantined) == (0, 0, 0)


def test_recentchanges_carries_the_page_id_of_deletions_moves_and_restores(wiki: RealWiki) -> None:
    """What the connector relies on, as the real wiki reports it: a log entry's ``pageid`` is the page it is
    about, even once the page is deleted; a move is listed under the old title and namespace."""
    walrus = wiki.page("Walrus")["pageid"]
    badger = wiki.page("Badger")["pageid"]
    wiki.delete("Walrus")
    wiki.move("Badger", "Help:Badger")
    wiki.undelete("Walrus")
    wiki.delete("Walrus")
    changes = wiki.query(list="recentchanges", rctype="log", rcprop="title|ids|loginfo", rcdir="newer", rclimit=50)[
        "query"
    ]["recentchanges"]
    changes = [c for c in changes if c["logtype"] in ("delete", "move")]
    logged = [(c["logtype"], c["logaction"], c["ns"], c["title"], c["pageid"]) for c in changes]
    assert logged == [
        ("delete", "delete", 0, "Walrus", walrus),
        ("move", "move", 0, "Badger", badger),
        ("delete", "restore", 0, "Walrus", walrus),
        ("delete", "delete", 0, "Walrus", walrus),
    ]
    assert changes[1]["logparams"]["target_ns"] == 12 and changes[1]["logparams"]["target_title"] == "Help:Badger"
    [deleted] = wiki.query(pageids=walrus, prop="info")["query"]["pages"]
    assert deleted == {"pageid": walrus, "missing": True}
    [moved] = wiki.query(pageids=badger, prop="info")["query"]["pages"]
    assert (moved["ns"], moved["title"]) == (12, "Help:Badger")


def test_answers_cut_by_the_result_size_limit_are_completed_before_pages_are_judged(
    seeded: WikiInstall, tmp_path: Path, services: Services
) -> None:
    """A wiki sends a batch of pages in parts (``rvcontinue``) when it would exceed $wgAPIMaxResultSize (8 MiB
    by default, which 50 long articles can exceed); a page whose revision comes in a later part is neither
    empty nor deleted. A 3000-byte limit makes every batch of 10 seed pages (~560 bytes each) arrive in parts."""
    install = realwiki.clone(seeded, tmp_path / "wiki")
    realwiki.append_settings(install, "$wgAPIMaxResultSize = 3000;")
    with realwiki.serve(install) as wiki:
        counts = sync_remote(services.pipeline, "realwiki", source(wiki))
        expected = mirrors(services, wiki)
        assert counts.committed == len(expected) and counts.quarantined == 0
        assert any("rvcontinue=" in uri and "gapcontinue=" in uri for uri in wiki.request_log())
        rows = documents(services)
        assert all(r["uri"].startswith(f"{wiki.server_url}/index.php/") for r in rows.values())

        edited = [animal_page(i)[0] for i in range(len(ANIMALS), len(ANIMALS) + 12)]
        for title in edited:
            wiki.edit(title, animal_page(7)[1] + f"\nA late note on {title}: seen wearing a ring on its left leg.\n")
        calls = len(wiki.request_log())
        again = sync_remote(services.pipeline, "realwiki", source(wiki))
        assert (again.committed, again.deleted, again.quarantined) == (12, 0, 0)
        assert any("pageids=" in uri and "rvcontinue=" in uri for uri in wiki.request_log()[calls:])
        mirrors(services, wiki)


def test_a_page_larger_than_the_result_size_limit_fails_the_sync_instead_of_looping(
    seeded: WikiInstall, tmp_path: Path, services: Services
) -> None:
    """MediaWiki answers a page it cannot fit with an empty revision list and a continuation pointing at that
    same page, forever; the connector stops with an error that says so."""
    install = realwiki.clone(seeded, tmp_path / "wiki")
    realwiki.append_settings(install, "$wgAPIMaxResultSize = 300;")
    with realwiki.serve(install) as wiki:
        with pytest.raises(MalformedPayloadError, match="continuation does not advance"):
            sync_remote(services.pipeline, "realwiki", source(wiki))
        assert len([uri for uri in wiki.request_log() if "generator=allpages" in uri]) == 2
    assert committed(services) == {}


def test_the_server_and_its_workers_are_stopped_by_pid(seeded: WikiInstall, tmp_path: Path) -> None:
    install = realwiki.clone(seeded, tmp_path / "wiki")
    with realwiki.serve(install, workers=3) as wiki:
        pids = [wiki.process.pid, *realwiki.descendants(wiki.process.pid)]
        assert len(pids) == 4
        assert wiki.page("Otter")["ns"] == 0
    assert not any(realwiki.alive(pid) for pid in pids)

    # workers outlive a server that dies first: they are found by their process group and stopped too
    with realwiki.serve(install, workers=2) as wiki:
        workers = realwiki.descendants(wiki.process.pid)
        os.kill(wiki.process.pid, signal.SIGTERM)
        wiki.process.wait(10)
        assert len(workers) == 2 and all(realwiki.alive(pid) for pid in workers)
    assert not any(realwiki.alive(pid) for pid in workers)


def test_missing_packages_fail_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(realwiki.MediaWikiUnavailable, match="apt-get install -y --no-install-recommends mediawiki"):
        realwiki.check_installed(mediawiki_dir=tmp_path)
    with pytest.raises(realwiki.MediaWikiUnavailable, match=r"php \(php-cli\)"):
        realwiki.check_installed(php=str(tmp_path / "no-php"))
