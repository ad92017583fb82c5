"""The ingestion core against the real embedded Postgres and the real model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from connectors.pdf import PdfConnector
from flows.counts import Counts
from flows.pdfs import ingest_pdf_paths, settle_deletions
from flows.pipeline import Pipeline
from flows.planning import resolve_source
from flows.runtime import Services
from flows.settings import RaglineSettings, database_url, load_settings
from tests.support.db import committed_documents, fresh_database
from tests.support.embedders import CountingEmbedder
from tests.support.meanwhile import ConcurrentWriterEmbedder
from tests.support.pdfgen import encrypted_pdf, image_only_pdf, not_a_pdf, text_pdf, truncated_pdf
from vectorstore import ledger, search, status
from vectorstore.db import Connection
from vectorstore.writers import Writers

TOPICS = {
    "volcano": [
        "Basaltic lava flows from shield volcanoes travel long distances because the magma has low "
        "viscosity and a high eruption temperature. Hawaiian eruptions are the classic example.",
        "Stratovolcanoes build steep cones from alternating layers of ash, pumice and andesitic lava; "
        "their explosive eruptions can send pyroclastic flows racing down the slopes.",
    ],
    "baking": [
        "Sourdough bread rises thanks to wild yeast and lactic acid bacteria living in a starter that is "
        "fed with flour and water every day before the dough is mixed.",
        "A laminated croissant dough is folded with cold butter many times, so thin layers of fat separate "
        "sheets of dough that puff up with steam in a hot oven.",
    ],
    "astronomy": [
        "A neutron star packs more than the mass of the Sun into a sphere twenty kilometres across; a "
        "teaspoon of its matter would weigh billions of tonnes on Earth.",
        "Comets that approach the Sun grow a coma and two tails, one of dust that curves along the orbit "
        "and one of ions that always points straight away from the Sun.",
    ],
}


def make_corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, pages in TOPICS.items():
        files[name] = text_pdf(root / f"{name}.pdf", pages, title=f"All about {name}")
    return files


def chunk_ids(svc: Services) -> set[str]:
    return {str(r["id"]) for r in svc.conn.execute("SELECT id FROM chunks").fetchall()}


def top(svc: Services, query: str, k: int = 3) -> list[search.SearchHit]:
    return search.search(svc.conn, svc.embedder.embed([query])[0], k)


def test_ingest_then_search_finds_file_and_page(tmp_path: Path, services: Services) -> None:
    files = make_corpus(tmp_path / "docs")
    counts = ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    assert (counts.seen, counts.new, counts.committed, counts.quarantined) == (3, 3, 3, 0)
    assert counts.chunks_written >= 6

    hit = top(services, "a teaspoon of neutron star matter weighs billions of tonnes")[0]
    assert Path(hit.uri) == files["astronomy"].resolve()
    assert hit.page == 1
    assert hit.title == "All about astronomy"
    hit = top(services, "folding cold butter into croissant dough")[0]
    assert (Path(hit.uri).name, hit.page) == ("baking.pdf", 2)

    rows = services.conn.execute(
        "SELECT d.status, d.chunk_count, count(c.id) AS n FROM documents d "
        "LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
    ).fetchall()
    assert len(rows) == 3 and all(r["status"] == "committed" and r["chunk_count"] == r["n"] > 0 for r in rows)
    model = services.conn.execute("SELECT name, dim, normalized FROM models").fetchall()
    assert model == [{"name": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384, "normalized": True}]


def test_unchanged_corpus_costs_no_model_work(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder
) -> None:
    files = make_corpus(tmp_path / "docs")
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    before = chunk_ids(services)
    counting_embedder.calls.clear()

    again = ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    # Files written in the last two seconds are read again (their stat is not trusted yet), found unchanged.
    read = sum(f.stat().st_size for f in files.values())
    assert again.as_dict() == {**Counts().as_dict(), "seen": 3, "unchanged": 3, "bytes_read": read}
    assert counting_embedder.calls == []
    assert chunk_ids(services) == before


def test_changed_file_replaces_its_chunks_and_reuses_unchanged_ones(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder
) -> None:
    files = make_corpus(tmp_path / "docs")
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    others = {
        str(r["id"])
        for r in services.conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.uri <> %s",
            (str(files["volcano"].resolve()),),
        )
    }
    pages = [*TOPICS["volcano"][:1], "Calderas form when the roof of an emptied magma chamber collapses."]
    text_pdf(files["volcano"], pages, title="All about volcano")
    counting_embedder.calls.clear()

    counts = ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    assert (counts.changed, counts.unchanged, counts.committed) == (1, 2, 1)
    assert counts.chunks_reused >= 1  # page 1 did not change: its chunk keeps its vector
    assert sum(counting_embedder.calls) == counts.chunks_written
    assert others <= chunk_ids(services)
    assert (Path(top(services, "roof of an emptied magma chamber collapses")[0].uri)) == files["volcano"].resolve()
    assert not [
        h for h in top(services, "stratovolcano pyroclastic flows ash pumice", k=10) if "Stratovolcanoes" in h.text
    ]


def test_file_gone_from_directory_loses_its_chunks(tmp_path: Path, services: Services) -> None:
    files = make_corpus(tmp_path / "docs")
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    files["baking"].unlink()

    counts = ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    assert counts.deleted == 1
    uris = {h.uri for h in top(services, "sourdough starter wild yeast", k=20)}
    assert str(files["baking"].resolve()) not in uris
    assert status.status(services.conn)["documents"] == 2


def test_file_given_directly_is_not_deleted_by_a_run_over_other_files(tmp_path: Path, services: Services) -> None:
    files = make_corpus(tmp_path / "docs")
    ingest_pdf_paths(services.pipeline, [str(files["baking"])])
    counts = ingest_pdf_paths(services.pipeline, [str(files["volcano"])])
    assert counts.deleted == 0
    assert status.status(services.conn)["documents"] == 2


def test_poison_pdfs_are_quarantined_and_the_rest_ingested(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs)
    full = text_pdf(tmp_path / "full.pdf", ["Glaciers carve U-shaped valleys as they grind slowly downhill."])
    truncated_pdf(docs / "cut.pdf", full, keep_fraction=0.5)
    encrypted_pdf(docs / "locked.pdf", "s3cret-pass", ["Penguins huddle together to survive the winter."])
    image_only_pdf(docs / "scan.pdf")
    not_a_pdf(docs / "notes.pdf")

    counts = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert (counts.committed, counts.quarantined) == (3, 4)
    reasons = {Path(r["uri"]).name: r["reason"] for r in ledger.quarantined(services.conn)}
    assert reasons == {
        "cut.pdf": "truncated",
        "locked.pdf": "encrypted",
        "scan.pdf": "no_text",
        "notes.pdf": "not_a_pdf",
    }
    assert all(r["error"] for r in ledger.quarantined(services.conn))

    # Nothing changed: poison is not retried in a hot loop.
    again = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert (again.still_quarantined, again.quarantined, again.committed) == (4, 0, 0)

    # Fixed at the source: the complete file replaces the truncated one and is picked up.
    shutil.copy(full, docs / "cut.pdf")
    fixed = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert (fixed.retried, fixed.committed, fixed.still_quarantined) == (1, 1, 3)
    assert Path(top(services, "glaciers carve valleys")[0].uri).name == "cut.pdf"


def test_configured_password_opens_a_quarantined_pdf(
    tmp_path: Path, services: Services, database_url: str, counting_embedder: CountingEmbedder
) -> None:
    encrypted_pdf(tmp_path / "locked.pdf", "s3cret-pass", ["Penguins huddle together to survive the winter."])
    first = ingest_pdf_paths(services.pipeline, [str(tmp_path)])
    assert first.quarantined == 1

    settings = load_settings(
        {
            "RAGLINE_HOME": str(tmp_path / "home"),
            "RAGLINE_DATABASE_URL": database_url,
            "RAGLINE_PDF_PASSWORDS": "wrong\ns3cret-pass",
        }
    )
    with_password = Services(settings, shared_embedder=counting_embedder)
    try:
        second = ingest_pdf_paths(with_password.pipeline, [str(tmp_path)])
        assert (second.retried, second.committed) == (1, 1)
        assert status.status(with_password.conn)["quarantined"] == 0
    finally:
        with_password.close()


def test_released_document_is_retried(tmp_path: Path, services: Services) -> None:
    not_a_pdf(tmp_path / "x.pdf")
    ingest_pdf_paths(services.pipeline, [str(tmp_path)])
    [row] = ledger.quarantined(services.conn)
    assert row["attempts"] == 1
    ledger.release(services.conn, [row["id"]])
    counts = ingest_pdf_paths(services.pipeline, [str(tmp_path)])
    assert (counts.retried, counts.quarantined) == (1, 1)
    [row] = ledger.quarantined(services.conn)
    assert row["attempts"] == 2


class ExplodingEmbedder(CountingEmbedder):
    """Dies (like a killed process would) after ``survive`` embedding calls."""

    def __init__(self, inner: CountingEmbedder, survive: int) -> None:
        super().__init__(inner)
        self.survive = survive

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        if len(self.calls) >= self.survive:
            raise RuntimeError("simulated crash")
        return super().embed(texts, token_counts=token_counts)


def test_crash_mid_run_then_rerun_equals_a_clean_run(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder, pg_server: str
) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs)
    for i in range(6):
        text_pdf(docs / f"extra{i}.pdf", [f"Page about topic number {i}: " + " ".join(TOPICS["volcano"])] * 3)
    clean = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert clean.committed == 9

    crash_settings = load_settings(
        {"RAGLINE_HOME": str(tmp_path / "h2"), "RAGLINE_DATABASE_URL": fresh_database(pg_server)}
    )
    crash_settings.batch_chunks = 4  # several commits before the crash
    crashing = Services(crash_settings, shared_embedder=ExplodingEmbedder(counting_embedder, survive=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest_pdf_paths(crashing.pipeline, [str(docs)])
    partial = status.status(crashing.conn)
    crashing.close()
    assert 0 < partial["documents"] < 9

    crash_settings.batch_chunks = 256
    resumed = Services(crash_settings, shared_embedder=counting_embedder)
    try:
        counts = ingest_pdf_paths(resumed.pipeline, [str(docs)])
        assert (counts.unchanged, counts.committed) == (partial["documents"], 9 - partial["documents"])
        assert chunk_ids(resumed) == chunk_ids(services)  # same ids: nothing duplicated, nothing lost
        assert status.status(resumed.conn)["chunks"] == status.status(services.conn)["chunks"]
    finally:
        resumed.close()


def test_a_file_name_that_is_not_utf8_is_quarantined_not_fatal(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs)
    good = text_pdf(tmp_path / "x.pdf", ["Café menus list croissants and espresso."])
    bad = os.fsencode(docs) + b"/caf\xe9.pdf"
    os.rename(good, bad)
    counts = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert (counts.committed, counts.quarantined) == (3, 1)
    [row] = ledger.quarantined(services.conn)
    assert row["reason"] == "bad_filename" and row["uri"].endswith("caf\\xe9.pdf")
    again = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert (again.still_quarantined, again.committed) == (1, 0)


def test_removing_a_link_to_a_directory_outside_the_root_deletes_its_documents(
    tmp_path: Path, services: Services
) -> None:
    outside = tmp_path / "outside"
    text_pdf(outside / "linked.pdf", ["Narwhal tusks are elongated teeth that sense the water."])
    root = tmp_path / "root"
    make_corpus(root)
    (root / "ext").symlink_to(outside)
    first = ingest_pdf_paths(services.pipeline, [str(root)])
    assert first.committed == 4
    assert top(services, "narwhal tusks sense the water")[0].uri == str(root.resolve() / "ext" / "linked.pdf")

    (root / "ext").unlink()
    second = ingest_pdf_paths(services.pipeline, [str(root)])
    assert second.deleted == 1
    hits = top(services, "narwhal tusks", k=20)
    assert hits and all("linked.pdf" not in h.uri for h in hits)


def test_a_new_password_retries_quarantined_documents_only(
    tmp_path: Path, services: Services, database_url: str, counting_embedder: CountingEmbedder
) -> None:
    make_corpus(tmp_path / "docs")
    encrypted_pdf(tmp_path / "docs" / "locked.pdf", "pw-1234", ["Penguins huddle together in winter."])
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    settings = load_settings(
        {"RAGLINE_HOME": str(tmp_path / "h"), "RAGLINE_DATABASE_URL": database_url, "RAGLINE_PDF_PASSWORDS": "pw-1234"}
    )
    with_password = Services(settings, shared_embedder=counting_embedder)
    try:
        counts = ingest_pdf_paths(with_password.pipeline, [str(tmp_path / "docs")])
    finally:
        with_password.close()
    assert (counts.unchanged, counts.retried, counts.committed) == (3, 1, 1)


def test_a_document_committed_after_the_plan_is_not_deleted_by_it(tmp_path: Path, services: Services) -> None:
    files = make_corpus(tmp_path / "docs")
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    files["baking"].unlink()
    from connectors.pdf import PdfConnector

    source = resolve_source(services.conn, services.settings, "pdf", "pdf")
    connector = PdfConnector([tmp_path / "docs"])
    planned = services.pipeline.plan(source, connector.iter_documents(), connector.covers)
    assert len(planned.deleted) == 1

    # Before the deletion is applied, another run sees the file back and commits it again.
    text_pdf(files["baking"], TOPICS["baking"] + ["A third page about brioche."])
    ingest_pdf_paths(services.pipeline, [str(files["baking"])])
    assert settle_deletions(services.pipeline, source, planned.deleted, planned.planned_at).deleted == 0
    assert any(Path(h.uri).name == "baking.pdf" for h in top(services, "brioche", k=5))


@pytest.mark.parametrize("writers", [0, 2])  # committed on the pipeline's connection, or by background writers
def test_a_batch_whose_kept_chunk_vanished_commits_one_document_at_a_time(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder, writers: int
) -> None:
    settings.database.writers = writers
    docs = tmp_path / "docs"
    files = make_corpus(docs)
    first = Services(settings, shared_embedder=counting_embedder)
    try:
        ingest_pdf_paths(first.pipeline, [str(docs)])
        reference = {
            r["external_id"]: r["n"]
            for r in first.conn.execute(
                "SELECT d.external_id, count(c.id) AS n FROM documents d JOIN chunks c ON c.document_id = d.id "
                "GROUP BY d.external_id"
            )
        }
    finally:
        first.close()
    # Two documents change in one batch; page 1 of the volcano file stays, so its chunk is kept, not embedded.
    text_pdf(files["volcano"], [TOPICS["volcano"][0], "Calderas form when a magma chamber collapses."])
    text_pdf(files["baking"], [TOPICS["baking"][0], "Brioche is enriched with butter and eggs."])
    volcano = str(files["volcano"].resolve())

    def remove_kept_chunk() -> None:
        with psycopg.connect(database_url(settings), autocommit=True) as other:
            gone = other.execute(
                "DELETE FROM chunks WHERE chunk_index = 0 AND document_id = (SELECT id FROM documents WHERE uri = %s)",
                (volcano,),
            ).rowcount
        assert gone == 1

    writer = ConcurrentWriterEmbedder(counting_embedder, remove_kept_chunk)
    svc = Services(settings, shared_embedder=writer)
    try:
        counts = ingest_pdf_paths(svc.pipeline, [str(docs)])
        assert (counts.changed, counts.committed, counts.quarantined) == (2, 2, 0)
        # The group commit failed as a whole (the volcano's kept chunk was gone): baking committed alone,
        # the volcano embedded again in full and committed.
        assert len(writer.calls) == 2
        rows = svc.conn.execute(
            "SELECT d.external_id, d.status, d.chunk_count, count(c.id) AS n FROM documents d "
            "JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
        ).fetchall()
        assert all(r["status"] == "committed" and r["chunk_count"] == r["n"] for r in rows)
        assert {r["external_id"]: r["n"] for r in rows} == reference
        hit = top(svc, "Hawaiian shield volcano basaltic lava of low viscosity")[0]
        assert (hit.uri, hit.page) == (volcano, 1)
    finally:
        svc.close()


def test_a_store_configured_without_full_text_ingests_and_searches_by_vector(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder
) -> None:
    files = make_corpus(tmp_path / "docs")
    settings.database.full_text = False
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        counts = ingest_pdf_paths(svc.pipeline, [str(tmp_path / "docs")])
        assert (counts.committed, counts.quarantined) == (3, 0)
        column = svc.conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'tsv' AND NOT attisdropped"
        ).fetchone()
        assert column is None
        hit = top(svc, "a teaspoon of neutron star matter weighs billions of tonnes")[0]
        assert Path(hit.uri) == files["astronomy"].resolve()
    finally:
        svc.close()


def _advisory_locks(svc: Services) -> int:
    row = svc.conn.execute(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ).fetchone()
    svc.conn.commit()
    return int(row["n"]) if row else -1


def test_background_writers_commit_every_batch_before_ingest_returns(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder
) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs)
    for i in range(5):
        text_pdf(docs / f"extra{i}.pdf", [f"Note {i} on lava: " + TOPICS["volcano"][0], TOPICS["baking"][1]])
    settings.batch_chunks = 1  # a batch per document: several in flight at once
    assert settings.database.writers == 2
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        committed: list[str] = []
        source = resolve_source(svc.conn, settings, "pdf", "pdf")
        planned = svc.pipeline.plan(source, PdfConnector([docs], settings.pdf).iter_documents(), lambda _: True)
        svc.pipeline.begin_load()
        counts = svc.pipeline.ingest(source, planned.work, lambda event, _: committed.append(event))
        svc.pipeline.finish_load()
        # Returned only once every batch was settled: all there, counted, and no document still claimed.
        assert (counts.committed, counts.quarantined, len(committed)) == (8, 0, 8)
        assert svc.writers is not None
        rows = svc.conn.execute(
            "SELECT d.status, d.chunk_count, count(c.id) AS n FROM documents d "
            "LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
        ).fetchall()
        assert len(rows) == 8 and all(r["status"] == "committed" and r["chunk_count"] == r["n"] > 0 for r in rows)
        # Every extra file repeats the croissant page of baking.pdf: that chunk takes the stored vector.
        assert counts.chunks_written + counts.chunks_reused == sum(r["n"] for r in rows)
        assert counts.chunks_reused >= 5
        assert _advisory_locks(svc) == 0
    finally:
        svc.close()


@pytest.mark.parametrize("batch_chunks", [256, 1])
def test_a_document_listed_twice_is_committed_once(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder, batch_chunks: int
) -> None:
    """A source may list one record twice (paging over records that change meanwhile): the second sight
    waits for the first's batch, pending (256) or in flight with a writer (1), and finds it committed."""
    files = make_corpus(tmp_path / "docs")
    settings.batch_chunks = batch_chunks
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        doc = PdfConnector([], settings.pdf).document(files["volcano"])
        other = PdfConnector([], settings.pdf).document(files["baking"])
        source = resolve_source(svc.conn, settings, "pdf", "pdf")
        svc.pipeline.begin_load()
        counts = svc.pipeline.ingest(source, [doc, other, doc])
        svc.pipeline.finish_load()
        assert (counts.committed, counts.done_elsewhere) == (2, 1)
        assert len(counting_embedder.calls) == (1 if batch_chunks == 256 else 2)
        assert status.status(svc.conn)["documents"] == 2
    finally:
        svc.close()


def test_batches_a_writer_cannot_commit_are_committed_on_the_pipelines_connection(
    tmp_path: Path, services: Services
) -> None:
    files = make_corpus(tmp_path / "docs")

    # A pool whose server went away after it opened: no connection can be had within its timeout.
    unreachable: ConnectionPool[Connection] = ConnectionPool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=2, timeout=2, open=True
    )
    broken = Pipeline(services.conn, services.settings, services.embedder, Writers(unreachable, 2))
    try:
        documents = [PdfConnector([], services.settings.pdf).document(f) for f in files.values()]
        source = resolve_source(services.conn, services.settings, "pdf", "pdf")
        broken.begin_load()
        counts = broken.ingest(source, documents)
        broken.finish_load()
    finally:
        assert broken.writers is not None
        broken.writers.close()
        unreachable.close()
    # The group commits failed on the writers ("cannot connect") and were redone one document at a time on the
    # pipeline's own connection: nothing lost, nothing left claimed.
    assert (counts.committed, counts.quarantined) == (3, 0)
    assert committed_documents(services) == 3
    assert _advisory_locks(services) == 0
