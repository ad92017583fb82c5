"""flows/delete_guard.py: no run deletes most of a source silently. The decision as a table; PDF folders and
a remote source against the real store and model; listings that fail or come back partial delete nothing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.base import DeleteGuard
from connectors.confluence import ConfluenceSettings, ConfluenceSource
from connectors.errors import MalformedPayloadError, SourceError
from connectors.http import HttpPolicy, ResilientClient
from connectors.hubspot import HubSpotSettings, HubSpotSource
from connectors.registry import PdfSourceSettings
from flows import delete_guard
from flows.counts import Counts
from flows.delete_guard import DeletionsHeld, allows
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import RaglineSettings
from tests.support.db import committed_documents
from tests.support.fake_confluence import EMAIL, TOKEN, FakeConfluence, serve_confluence
from tests.support.fake_hubspot import FakeHubSpot
from tests.support.httpserver import Logged, Reply, ScriptedServer, serve
from tests.support.pdfgen import text_pdf
from tests.support.remote import sync
from vectorstore import cursors, ledger

FAST = HttpPolicy(backoff_base=0.01, backoff_max=0.05, max_attempts=5, breaker_threshold=50)
GUARD = DeleteGuard()  # max_share 0.5, min_count 3


@pytest.mark.parametrize(
    ("held", "documents", "guard", "confirmed", "allowed"),
    [
        (0, 0, GUARD, False, True),  # nothing to delete
        (1, 5, GUARD, False, True),  # one file of five
        (5, 5, GUARD, False, False),  # an emptied folder
        (5, 10, GUARD, False, True),  # exactly the share
        (6, 10, GUARD, False, False),  # past it
        (3, 3, GUARD, False, True),  # a small source: at most min_count always go
        (4, 4, GUARD, False, False),
        (4, 4, DeleteGuard(min_count=0, max_share=1.0), False, True),  # a guard that allows everything
        (1, 100, DeleteGuard(min_count=0, max_share=0.0), False, False),  # one that holds everything
        (5, 5, GUARD, True, True),  # confirmed by the operator
        (5, 5, DeleteGuard(allow_mass=True), False, True),  # confirmed by the source's setting
    ],
)
def test_allows(held: int, documents: int, guard: DeleteGuard, confirmed: bool, allowed: bool) -> None:
    assert allows(held, documents, guard, confirmed=confirmed) is allowed


def test_a_source_guard_overrides_the_top_level_one(settings: RaglineSettings) -> None:
    own = DeleteGuard(max_share=0.9)
    configured = settings.model_copy(
        update={
            "sources": [
                PdfSourceSettings(name="plain", paths=["/x"]),
                PdfSourceSettings(name="docs", paths=["/y"], deletes=own),
            ]
        }
    )
    assert delete_guard.guard_of(configured, "docs") == (own, "sources[1].deletes")
    assert delete_guard.guard_of(configured, "plain") == (configured.deletes, "deletes")
    assert delete_guard.guard_of(configured, "adhoc") == (configured.deletes, "deletes")


def test_a_bad_guard_setting_names_its_field() -> None:
    with pytest.raises(ValueError, match=r"deletes\.max_share"):
        PdfSourceSettings.model_validate({"name": "docs", "paths": ["/y"], "deletes": {"max_share": 1.5}})


# -- PDF folders ----------------------------------------------------------------------------------------------


def folder(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [text_pdf(root / f"note{i}.pdf", [f"Field note {i}: the heron{i} waded past the reeds."]) for i in range(n)]


def chunks_of(services: Services, source: str) -> int:
    """Chunks of the source's committed documents: what a search can find."""
    row = services.conn.execute(
        """
        SELECT count(*) AS n FROM chunks c JOIN documents d ON d.id = c.document_id JOIN sources s ON s.id = d.source_id
        WHERE s.name = %s AND d.status = 'committed'
        """,
        (source,),
    ).fetchone()
    services.conn.commit()
    assert row is not None
    return int(row["n"])


def last_run(services: Services) -> tuple[str, str | None, int]:
    row = services.conn.execute("SELECT status, error, counts FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    services.conn.commit()
    assert row is not None
    return row["status"], row["error"], int(row["counts"].get("deletions_held", 0))


def test_an_emptied_folder_keeps_its_chunks_until_confirmed(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "share"
    folder(docs, 5)
    assert ingest_pdf_paths(services.pipeline, [docs]).committed == 5
    stored = chunks_of(services, "pdf")
    assert stored >= 5

    for file in docs.iterdir():  # the share came back empty (unmounted)
        file.unlink()
    counts = Counts()
    with pytest.raises(DeletionsHeld, match="--allow-mass-delete") as held:
        ingest_pdf_paths(services.pipeline, [docs], counts=counts)
    assert "'pdf'" in str(held.value) and "5 of its 5" in str(held.value) and "deletes.max_share" in str(held.value)
    assert (counts.deleted, counts.deletions_held) == (0, 5)
    assert chunks_of(services, "pdf") == stored and committed_documents(services) == 5
    status, error, recorded_held = last_run(services)
    assert status == "failed" and error is not None and error.startswith("DeletionsHeld: source 'pdf'")
    assert recorded_held == 5

    # Still empty: held again, still nothing deleted.
    with pytest.raises(DeletionsHeld):
        ingest_pdf_paths(services.pipeline, [docs])
    assert chunks_of(services, "pdf") == stored

    confirmed = ingest_pdf_paths(services.pipeline, [docs], allow_mass_delete=True)
    assert (confirmed.deleted, confirmed.deletions_held) == (5, 0)
    assert chunks_of(services, "pdf") == 0 and committed_documents(services) == 0
    assert last_run(services)[0] == "completed"


def test_held_deletions_are_applied_by_a_confirmed_run_with_nothing_new_to_delete(
    tmp_path: Path, services: Services
) -> None:
    docs = tmp_path / "share"
    folder(docs, 5)
    ingest_pdf_paths(services.pipeline, [docs])
    shutil.rmtree(docs)
    docs.mkdir()
    with pytest.raises(DeletionsHeld):
        ingest_pdf_paths(services.pipeline, [docs])
    # A run over other paths of the source finds nothing gone itself, and applies what the operator confirms.
    other = tmp_path / "other"
    folder(other, 1)
    confirmed = ingest_pdf_paths(services.pipeline, [other], allow_mass_delete=True)
    assert (confirmed.committed, confirmed.deleted, confirmed.deletions_held) == (1, 5, 0)
    assert committed_documents(services) == 1


def test_files_back_before_confirmation_are_held_no_more(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "share"
    files = folder(docs, 5)
    ingest_pdf_paths(services.pipeline, [docs])
    hidden = tmp_path / "hidden"
    docs.rename(hidden)  # unmounted...
    docs.mkdir()
    with pytest.raises(DeletionsHeld):
        ingest_pdf_paths(services.pipeline, [docs])
    docs.rmdir()
    hidden.rename(docs)  # ...and mounted again, the same files
    back = ingest_pdf_paths(services.pipeline, [docs])
    assert (back.unchanged, back.deleted, back.deletions_held) == (5, 0, 0)
    source_id = ledger.ensure_source(services.conn, "pdf", "pdf")
    entries = ledger.entries(services.conn, source_id, [str(f) for f in files])
    assert len(entries) == 5 and all(e.delete_held_at is None and e.status == "committed" for e in entries.values())
    # Held no more: a confirmed run later deletes nothing.
    assert ingest_pdf_paths(services.pipeline, [docs], allow_mass_delete=True).deleted == 0


def test_one_file_of_five_is_deleted_at_once(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "share"
    files = folder(docs, 5)
    ingest_pdf_paths(services.pipeline, [docs])
    files[2].unlink()
    counts = ingest_pdf_paths(services.pipeline, [docs])
    assert (counts.deleted, counts.deletions_held, counts.unchanged) == (1, 0, 4)
    assert committed_documents(services) == 4 and last_run(services)[0] == "completed"


def test_a_source_that_allows_mass_deletes_needs_no_flag(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "share"
    folder(docs, 5)
    settings = services.settings.model_copy(
        update={"sources": [PdfSourceSettings(name="pdf", paths=[str(docs)], deletes=DeleteGuard(allow_mass=True))]}
    )
    services.pipeline.settings = settings
    ingest_pdf_paths(services.pipeline, [docs])
    shutil.rmtree(docs)
    docs.mkdir()
    assert ingest_pdf_paths(services.pipeline, [docs]).deleted == 5


def test_a_missing_root_deletes_nothing(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "share"
    folder(docs, 5)
    ingest_pdf_paths(services.pipeline, [docs])
    shutil.rmtree(docs)  # the mount point itself is gone
    with pytest.raises(FileNotFoundError):
        ingest_pdf_paths(services.pipeline, [docs], allow_mass_delete=True)
    assert committed_documents(services) == 5


# -- remote sources -------------------------------------------------------------------------------------------


@pytest.fixture
def crm() -> Iterator[tuple[FakeHubSpot, ScriptedServer]]:
    fake = FakeHubSpot()
    with serve() as srv:
        handler = fake.handler()
        for obj in ("companies", "contacts"):
            srv.route(f"/crm/v3/objects/{obj}", handler)
            srv.route(f"/crm/v3/objects/{obj}/search", handler)
        yield fake, srv


def hubspot(srv: ScriptedServer, objects: tuple[str, ...] = ("companies",)) -> HubSpotSource:
    cfg = HubSpotSettings.model_validate({"name": "crm", "base_url": srv.url, "objects": list(objects)})
    client = ResilientClient("crm", FAST, base_url=srv.url, headers={"Authorization": "Bearer test"})
    return HubSpotSource(cfg, client)


def test_mass_archived_records_are_held_while_the_cursor_moves_on(
    crm: tuple[FakeHubSpot, ScriptedServer], services: Services
) -> None:
    fake, srv = crm
    for i in range(8):
        fake.upsert("companies", str(i + 1), name=f"Company {i}", description=f"Builds lighthouse lens {i}.")
    assert sync(services, "crm", hubspot(srv)).committed == 8
    source_id = ledger.ensure_source(services.conn, "crm", "hubspot")
    before = cursors.load_cursor(services.conn, source_id)

    for i in range(6):
        fake.archive("companies", str(i + 1))
    counts = Counts()
    with pytest.raises(DeletionsHeld, match="'crm': 6 of its 8 documents"):
        sync(services, "crm", hubspot(srv), counts=counts)
    assert (counts.deleted, counts.deletions_held) == (0, 6)
    assert committed_documents(services) == 8 and chunks_of(services, "crm") >= 8
    assert cursors.load_cursor(services.conn, source_id) != before  # the archive was read past

    # The API will not report them again: the held deletions are what the confirmation applies.
    confirmed = sync(services, "crm", hubspot(srv), allow_mass_delete=True)
    assert (confirmed.deleted, confirmed.deletions_held) == (6, 0)
    assert committed_documents(services) == 2


def test_a_partial_reconcile_listing_deletes_nothing(monkeypatch: pytest.MonkeyPatch, services: Services) -> None:
    monkeypatch.setenv("CONFLUENCE_EMAIL", EMAIL)
    monkeypatch.setenv("CONFLUENCE_TOKEN", TOKEN)
    fake = FakeConfluence()
    fake.add_space("ENG")
    ids = [fake.create("ENG", f"Page {i}", f"<p>The otter{i} floats on its back.</p>").id for i in range(4)]
    with serve_confluence(fake) as srv:

        def source(**more: object) -> ConfluenceSource:
            config = {"name": "kb", "base_url": f"{srv.url}/wiki", "spaces": ["ENG"], "http": FAST.model_dump()}
            return ConfluenceSource(ConfluenceSettings.model_validate({**config, **more}))

        with source() as first:
            assert sync(services, "kb", first).committed == 4
        good = fake.handler()

        def nameless(req: Logged) -> Reply:
            reply = good(req)
            for page in reply.body.get("results", []) if isinstance(reply.body, dict) else []:
                if page.get("id") == ids[0]:
                    del page["id"]
            return reply

        srv.route(f"/wiki/api/v2/spaces/{fake.spaces['ENG']}/pages", nameless)
        with source(reconcile_hours=0) as reconcile, pytest.raises(MalformedPayloadError, match="without an id"):
            sync(services, "kb", reconcile)
    assert committed_documents(services) == 4


def test_a_sync_that_fails_after_reporting_deletions_deletes_nothing(
    crm: tuple[FakeHubSpot, ScriptedServer], services: Services
) -> None:
    fake, srv = crm
    for i in range(4):
        fake.upsert("companies", str(i + 1), name=f"Company {i}", description=f"Charts tide table {i}.")
    fake.upsert("contacts", "9001", firstname="Grace", lastname="Hopper", email="grace@navy.mil")
    both = ("companies", "contacts")
    assert sync(services, "crm", hubspot(srv, both)).committed == 5

    fake.archive("companies", "1")  # reported in the companies batches; then the contacts listing fails
    fake.fault = lambda req: Reply(503, {"message": "down"}) if "/contacts" in req.path else None
    counts = Counts()
    with pytest.raises(SourceError):
        sync(services, "crm", hubspot(srv, both), counts=counts)
    assert (counts.deleted, counts.deletions_held) == (0, 0) and committed_documents(services) == 5
    source_id = ledger.ensure_source(services.conn, "crm", "hubspot")
    assert ledger.entries(services.conn, source_id, ["companies/1"])["companies/1"].delete_held_at is not None

    fake.fault = lambda _: None
    assert sync(services, "crm", hubspot(srv, both)).deleted == 1  # the archive was read past: the hold applies
    assert committed_documents(services) == 4
