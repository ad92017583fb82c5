"""The contract every remote connector keeps with the pipeline, checked for each against its emulated API on
127.0.0.1 through ``sync_remote`` with the real store and model:

- a first sync ingests every record;
- a sync that stops after any batch and resumes from the cursor it saved ends with the same store as one
  that never stopped (same documents, same chunk ids, nothing twice);
- edits reach the store, deletions remove the record's chunks;
- replaying batches (a run from an older cursor) writes nothing and duplicates nothing;
- a malformed record is quarantined with its reason and the rest of the run commits.

Each connector gets an adapter: how to create, edit, delete a record at the fake source, how to damage one
record in the answers, and how to build the connector (small pages, so a handful of records makes several
batches). Connector-specific behaviour (paging caps, locators, redirects, throttling) stays in
``test_sync_<kind>.py``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

import pytest

from connectors.base import Batch, RemoteSource
from connectors.confluence import ConfluenceSettings, ConfluenceSource
from connectors.confluence_site import basic_auth
from connectors.http import HttpPolicy, HttpStats, ResilientClient
from connectors.hubspot import HubSpotSettings, HubSpotSource
from connectors.mediawiki import MediaWikiSettings, MediaWikiSource
from connectors.salesforce import SalesforceSettings, SalesforceSource
from flows.counts import Counts
from flows.runtime import Services
from flows.settings import load_settings
from tests.support.db import migrated_database
from tests.support.embedders import CountingEmbedder
from tests.support.fake_confluence import EMAIL, FakeConfluence
from tests.support.fake_confluence import TOKEN as CONFLUENCE_TOKEN
from tests.support.fake_hubspot import FakeHubSpot
from tests.support.fake_mediawiki import FakeWiki
from tests.support.fake_salesforce import TOKEN as SALESFORCE_TOKEN
from tests.support.fake_salesforce import VERSION, FakeSalesforce
from tests.support.httpserver import Handler, Logged, Reply, ScriptedServer, serve
from tests.support.remote import sync
from vectorstore import cursors, ledger

NAME = "remote"
RECORDS = 5
PAGE = 2  # records per batch: five records make three listing batches
FAST = HttpPolicy(backoff_base=0.01, backoff_max=0.05, max_attempts=3, breaker_threshold=50, read_timeout=5.0)
ANIMALS = ["otter", "heron", "badger", "lynx", "walrus"]
EDITED = "The lynx now collects shiny pebbles on the riverbank."


def text(i: int) -> str:
    return f"The {ANIMALS[i % len(ANIMALS)]} number {i} lives near river {i} and eats fish number {i * 7}."


class Adapter(ABC):
    """One connector and its emulated API, as the contract drives them. Records are named by external id."""

    kind: str

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.broken: set[str] = set()

    def answers(self, inner: Handler) -> Handler:
        """The fake's answers, with the records in ``broken`` damaged (on a copy: the fake keeps its store)."""

        def handle(req: Logged) -> Reply:
            reply = inner(req)
            if not self.broken or not isinstance(reply.body, dict):
                return reply
            body = copy.deepcopy(reply.body)
            self.damage(body)
            return Reply(reply.status, body, reply.headers)

        return handle

    @abstractmethod
    def create(self, i: int) -> str: ...

    @abstractmethod
    def edit(self, external_id: str, words: str) -> None: ...

    @abstractmethod
    def delete(self, external_id: str) -> None: ...

    @abstractmethod
    def damage(self, body: dict[str, Any]) -> None: ...

    @abstractmethod
    def connector(self) -> RemoteSource: ...


class WikiAdapter(Adapter):
    kind = "mediawiki"

    def __init__(self, server: ScriptedServer) -> None:
        super().__init__(server)
        self.fake = FakeWiki()
        server.route("/w/api.php", self.answers(self.fake.handler(server.url)))

    def create(self, i: int) -> str:
        return str(self.fake.add(f"Page {i} {ANIMALS[i]}", text(i)).pageid)

    def edit(self, external_id: str, words: str) -> None:
        self.fake.edit(int(external_id), words)

    def delete(self, external_id: str) -> None:
        self.fake.delete(int(external_id))

    def damage(self, body: dict[str, Any]) -> None:
        for page in body.get("query", {}).get("pages", []):
            if str(page.get("pageid")) in self.broken:
                page["revisions"] = [{"revid": 9}]  # a revision without content

    def connector(self) -> RemoteSource:
        url = f"{self.server.url}/w/api.php"
        return MediaWikiSource(MediaWikiSettings(name=NAME, base_url=url, page_size=PAGE, http=FAST))


class HubSpotAdapter(Adapter):
    kind = "hubspot"

    def __init__(self, server: ScriptedServer) -> None:
        super().__init__(server)
        self.fake = FakeHubSpot()
        handler = self.answers(self.fake.handler())
        server.route("/crm/v3/objects/companies", handler)
        server.route("/crm/v3/objects/companies/search", handler)

    def create(self, i: int) -> str:
        self.fake.upsert("companies", str(i + 1), name=f"Company {i}", description=text(i))
        return f"companies/{i + 1}"

    def edit(self, external_id: str, words: str) -> None:
        self.fake.upsert("companies", external_id.removeprefix("companies/"), description=words)

    def delete(self, external_id: str) -> None:
        self.fake.archive("companies", external_id.removeprefix("companies/"))

    def damage(self, body: dict[str, Any]) -> None:
        for record in body.get("results", []):
            if f"companies/{record.get('id')}" in self.broken and "properties" in record:
                record["properties"] = ["not", "an", "object"]

    def connector(self) -> RemoteSource:
        settings = HubSpotSettings(name=NAME, base_url=self.server.url, objects=["companies"], page_size=PAGE)
        client = ResilientClient(NAME, FAST, base_url=self.server.url, headers={"Authorization": "Bearer t"})
        return HubSpotSource(settings, client)


class SalesforceAdapter(Adapter):
    """The damage is applied to the query's first answer: pages after it come from locators the fake routes
    itself, so the contract breaks the first record created."""

    kind = "salesforce"

    def __init__(self, server: ScriptedServer) -> None:
        super().__init__(server)
        self.fake = FakeSalesforce(batch_size=PAGE)
        self.fake.mount(server)
        server.route(f"/services/data/{VERSION}/queryAll", self.answers(self.fake.handler()))

    def create(self, i: int) -> str:
        return f"Account/{self.fake.upsert('Account', Name=f'Company {i}', Description=text(i))}"

    def edit(self, external_id: str, words: str) -> None:
        self.fake.upsert("Account", external_id.removeprefix("Account/"), Description=words)

    def delete(self, external_id: str) -> None:
        self.fake.delete("Account", external_id.removeprefix("Account/"))

    def damage(self, body: dict[str, Any]) -> None:
        for row in body.get("records", []):
            if f"Account/{row.get('Id')}" in self.broken:
                row["Description"] = ["not", "a", "field", "value"]

    def connector(self) -> RemoteSource:
        settings = SalesforceSettings.model_validate(
            {"name": NAME, "base_url": self.server.url, "objects": ["Account"]}
        )
        headers = {"Authorization": f"Bearer {SALESFORCE_TOKEN}"}
        return SalesforceSource(settings, ResilientClient(NAME, FAST, base_url=self.server.url, headers=headers))


class ConfluenceAdapter(Adapter):
    """Deleting a page moves it to the trash; the incremental run's listing of removed pages reports it."""

    kind = "confluence"

    def __init__(self, server: ScriptedServer) -> None:
        super().__init__(server)
        self.fake = FakeConfluence()
        space = self.fake.add_space("ENG")
        self.fake.mount(server)
        server.route(f"/wiki/api/v2/spaces/{space}/pages", self.answers(self.fake.handler()))
        server.route("/wiki/rest/api/content/search", self.answers(self.fake.handler()))

    def create(self, i: int) -> str:
        return f"page/{self.fake.create('ENG', f'Page {i} {ANIMALS[i]}', f'<p>{text(i)}</p>').id}"

    def edit(self, external_id: str, words: str) -> None:
        self.fake.edit(external_id.removeprefix("page/"), body=f"<p>{words}</p>")

    def delete(self, external_id: str) -> None:
        self.fake.trash(external_id.removeprefix("page/"))

    def damage(self, body: dict[str, Any]) -> None:
        for page in body.get("results", []):
            if f"page/{page.get('id')}" in self.broken:
                page.pop("body", None)

    def connector(self) -> RemoteSource:
        site = f"{self.server.url}/wiki"
        settings = ConfluenceSettings(name=NAME, base_url=site, spaces=["ENG"], page_size=PAGE, http=FAST)
        headers = {**basic_auth(EMAIL, CONFLUENCE_TOKEN), "Accept": "application/json"}
        return ConfluenceSource(settings, ResilientClient(NAME, FAST, headers=headers))


ADAPTERS: dict[str, type[Adapter]] = {
    "mediawiki": WikiAdapter,
    "hubspot": HubSpotAdapter,
    "salesforce": SalesforceAdapter,
    "confluence": ConfluenceAdapter,
}


class Crash(Exception):
    """The process dying between two batches."""


class Recording:
    """A connector that records the cursor it started from and each batch's cursor, and optionally dies
    after ``crash_after`` batches (their cursors saved, the next one not)."""

    def __init__(self, inner: RemoteSource, crash_after: int | None = None) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.crash_after = crash_after
        self.started_from: dict[str, Any] | None = None
        self.cursors: list[dict[str, Any] | None] = []

    @property
    def stats(self) -> HttpStats:
        return self.inner.stats

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]:
        self.started_from = cursor
        for batch in self.inner.batches(cursor):
            if len(self.cursors) == self.crash_after:
                raise Crash
            self.cursors.append(batch.cursor)
            yield batch

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(params=list(ADAPTERS))
def remote(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    with serve() as server:
        yield ADAPTERS[request.param](server)


@pytest.fixture
def fresh_services(
    tmp_path: Path, pg_server: str, template_database: str, counting_embedder: CountingEmbedder
) -> Iterator[Callable[[], Services]]:
    """More stores for one test: each a database of its own, all with the session's model."""
    with ExitStack() as stack:
        made = iter(range(1_000))

        def make() -> Services:
            home = tmp_path / f"home{next(made)}"
            url = migrated_database(pg_server, template_database)
            svc = Services(
                load_settings({"RAGLINE_HOME": str(home), "RAGLINE_DATABASE_URL": url}),
                shared_embedder=counting_embedder,
            )
            stack.callback(svc.close)
            return svc

        yield make


def store_state(svc: Services) -> list[tuple[str, str, int, str]]:
    """Every chunk as (external id, document status, index, chunk id): a duplicate shows as a second row."""
    rows = svc.conn.execute(
        """
        SELECT d.external_id, d.status, c.chunk_index, c.id::text AS chunk
        FROM documents d LEFT JOIN chunks c ON c.document_id = d.id
        ORDER BY d.external_id, c.chunk_index, c.id
        """
    ).fetchall()
    svc.conn.commit()
    return [(r["external_id"], r["status"], r["chunk_index"], r["chunk"]) for r in rows]


def committed_ids(svc: Services) -> list[str]:
    return sorted(e for e, status, _, _ in store_state(svc) if status == "committed")


def chunk_texts(svc: Services, external_id: str) -> list[str]:
    rows = svc.conn.execute(
        "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.external_id = %s",
        (external_id,),
    ).fetchall()
    svc.conn.commit()
    return [r["text"] for r in rows]


def saved_cursor(svc: Services, kind: str) -> dict[str, Any] | None:
    return cursors.load_cursor(svc.conn, ledger.ensure_source(svc.conn, NAME, kind))


def run(svc: Services, remote: Adapter, crash_after: int | None = None) -> tuple[Counts, Recording]:
    """One sync of the adapter's connector, recorded, its client closed afterwards."""
    with Recording(remote.connector(), crash_after) as recording:
        return sync(svc, NAME, recording), recording


def test_a_first_sync_ingests_every_record(remote: Adapter, services: Services) -> None:
    ids = [remote.create(i) for i in range(RECORDS)]
    counts, _ = run(services, remote)
    assert (counts.seen, counts.committed, counts.quarantined, counts.deleted) == (RECORDS, RECORDS, 0, 0)
    assert sorted(set(committed_ids(services))) == sorted(ids)
    assert counts.http_requests > 0


def test_a_sync_resumed_from_any_saved_cursor_ends_as_an_uninterrupted_one(
    remote: Adapter, services: Services, fresh_services: Callable[[], Services]
) -> None:
    for i in range(RECORDS):
        remote.create(i)
    _, whole = run(services, remote)
    expected = store_state(services)
    assert len(whole.cursors) >= 3  # several batches: several places to stop
    for crash_after in range(1, len(whole.cursors)):
        svc = fresh_services()
        with pytest.raises(Crash):
            run(svc, remote, crash_after)
        saved = saved_cursor(svc, remote.kind)
        _, resumed = run(svc, remote)
        assert saved is not None and resumed.started_from == saved, crash_after
        assert store_state(svc) == expected, crash_after


def test_edits_and_deletions_reach_the_store(remote: Adapter, services: Services) -> None:
    ids = [remote.create(i) for i in range(RECORDS)]
    run(services, remote)
    remote.edit(ids[1], EDITED)
    remote.delete(ids[2])
    counts, _ = run(services, remote)
    assert (counts.committed, counts.deleted, counts.quarantined) == (1, 1, 0)
    assert committed_ids(services) == sorted(set(ids) - {ids[2]})
    assert chunk_texts(services, ids[2]) == []
    edited = chunk_texts(services, ids[1])
    assert edited and any("shiny pebbles" in t for t in edited)


def test_replaying_batches_from_older_cursors_writes_nothing(remote: Adapter, services: Services) -> None:
    """A batch is replayed when a run dies after committing it but before saving its cursor: every cursor a
    run saved is replayed here, against the source as that run saw it (a Salesforce locator is a snapshot
    of its query, so replaying one after later edits would serve their older versions, as the source
    itself would for a run resumed within the locator's lifetime)."""
    ids = [remote.create(i) for i in range(RECORDS)]
    _, first = run(services, remote)
    replay_each(services, remote, [None, *first.cursors[:-1]])
    remote.edit(ids[1], EDITED)
    remote.delete(ids[2])
    _, second = run(services, remote)
    assert second.started_from is not None  # the run with the edit and the deletion is replayed too
    replay_each(services, remote, [second.started_from, *second.cursors[:-1]])


def replay_each(svc: Services, remote: Adapter, older: list[dict[str, Any] | None]) -> None:
    before = store_state(svc)
    source_id = ledger.ensure_source(svc.conn, NAME, remote.kind)
    assert len(older) >= 1 and before
    for cursor in older:
        cursors.save_cursor(svc.conn, source_id, cursor)
        svc.conn.commit()
        replay, _ = run(svc, remote)
        assert (replay.committed, replay.deleted, replay.quarantined) == (0, 0, 0), cursor
        assert replay.unchanged > 0 or replay.seen == 0, cursor
        assert store_state(svc) == before, cursor


def test_a_malformed_record_is_quarantined_and_the_rest_commits(remote: Adapter, services: Services) -> None:
    ids = [remote.create(i) for i in range(RECORDS)]
    remote.broken.add(ids[0])
    counts, _ = run(services, remote)
    assert (counts.committed, counts.quarantined) == (RECORDS - 1, 1)
    [row] = ledger.quarantined(services.conn)
    assert (row["external_id"], row["reason"]) == (ids[0], "malformed")
    assert committed_ids(services) == sorted(ids[1:])
    assert saved_cursor(services, remote.kind) is not None  # the run went on and finished
