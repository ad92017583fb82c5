"""No model work twice, end to end with the real model and the real embedded Postgres: a chunk whose text the
same model generation already embedded takes the stored vector, whatever document, source or tenant stored
it; its own rows (document, source, tenant, id) are written as for any other chunk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedding.model import Embedder, EmbeddingSettings, resolve_model_dir
from flows.counts import Counts
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import RaglineSettings
from tests.support.embedders import CountingEmbedder
from tests.support.meanwhile import ConcurrentWriterEmbedder
from tests.support.pdfgen import text_pdf
from vectorstore import ledger
from vectorstore.search import SearchFilter

PAGES = [
    "Basaltic lava flows from shield volcanoes travel long distances because the magma has low viscosity and a "
    "high eruption temperature. Hawaiian eruptions are the classic example.",
    "A laminated croissant dough is folded with cold butter many times, so thin layers of fat separate sheets of "
    "dough that puff up with steam in a hot oven.",
    "A neutron star packs more than the mass of the Sun into a sphere twenty kilometres across; a teaspoon of its "
    "matter would weigh billions of tonnes on Earth.",
]


def chunks_of(svc: Services, path: Path) -> list[dict[str, Any]]:
    """The chunk rows of the document at ``path``, in order, with their lineage and vector."""
    rows = svc.conn.execute(
        "SELECT c.id, c.document_id, c.chunk_index, c.page, c.text, c.token_count, c.tenant, c.model_id, "
        "c.embedding, s.name AS source FROM chunks c JOIN documents d ON d.id = c.document_id "
        "JOIN sources s ON s.id = d.source_id WHERE d.uri = %s ORDER BY c.chunk_index",
        (str(path.resolve()),),
    ).fetchall()
    svc.conn.commit()
    return [{**r, "embedding": r["embedding"].to_numpy()} for r in rows]


def assert_copied(copy: list[dict[str, Any]], original: list[dict[str, Any]]) -> None:
    """Same texts and vectors, rows of their own."""
    assert copy and [c["text"] for c in copy] == [o["text"] for o in original]
    for c, o in zip(copy, original, strict=True):
        assert np.array_equal(c["embedding"], o["embedding"])
        assert c["id"] != o["id"] and c["document_id"] != o["document_id"]


def test_a_pdf_copied_under_a_new_name_embeds_nothing_and_keeps_its_own_lineage(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder
) -> None:
    docs = tmp_path / "docs"
    original = text_pdf(docs / "original.pdf", PAGES, title="Three topics")
    first = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert first.embedded_tokens > 0 and first.chunks_reused == 0
    copy = docs / "copy of original.pdf"
    shutil.copy(original, copy)
    counting_embedder.calls.clear()

    again = ingest_pdf_paths(services.pipeline, [str(docs)])
    assert counting_embedder.calls == []
    assert (again.new, again.committed, again.embedded_tokens, again.chunks_written) == (1, 1, 0, 0)
    rows = chunks_of(services, copy)
    assert again.chunks_reused == len(rows)
    assert_copied(rows, chunks_of(services, original))
    assert [r["page"] for r in rows] == [1, 2, 3]

    hits = services.search("a teaspoon of neutron star matter weighs billions of tonnes", 2)
    assert {(h.uri, h.page) for h in hits} == {(str(original.resolve()), 3), (str(copy.resolve()), 3)}

    # The copy is a document like any other: removing the original leaves it whole and searchable.
    original.unlink()
    assert ingest_pdf_paths(services.pipeline, [str(docs)]).deleted == 1
    [hit] = services.search("folding cold butter into croissant dough", 1)
    assert (hit.uri, hit.page, hit.title) == (str(copy.resolve()), 2, "Three topics")


def test_a_copied_folder_in_another_source_costs_parsing_only(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder
) -> None:
    folder = tmp_path / "folder"
    for i, page in enumerate(PAGES):
        text_pdf(folder / f"doc-{i}.pdf", [page, f"Appendix {i}. " + page])
    ingest_pdf_paths(services.pipeline, [str(folder)])
    shutil.copytree(folder, tmp_path / "renamed")
    for f in list((tmp_path / "renamed").iterdir()):
        f.rename(f.with_name("copy-" + f.name))
    counting_embedder.calls.clear()

    copied = ingest_pdf_paths(services.pipeline, [str(tmp_path / "renamed")], source="archive")
    assert counting_embedder.calls == []
    assert (copied.committed, copied.embedded_tokens, copied.chunks_written, copied.chunks_reused) == (3, 0, 0, 6)
    for i in range(len(PAGES)):
        rows = chunks_of(services, tmp_path / "renamed" / f"copy-doc-{i}.pdf")
        assert {r["source"] for r in rows} == {"archive"}
        assert_copied(rows, chunks_of(services, folder / f"doc-{i}.pdf"))


def test_a_page_inserted_at_the_front_embeds_that_page_only(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder
) -> None:
    """Chunk ids include the position, so every chunk after the new page has a new id: before reuse by text
    they were all embedded again."""
    doc = text_pdf(tmp_path / "docs" / "manual.pdf", PAGES)
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    text_pdf(doc, ["A new preface about glaciers carving U-shaped valleys.", *PAGES])
    counting_embedder.calls.clear()

    counts = ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    assert counting_embedder.calls == [1]
    assert (counts.changed, counts.chunks_written, counts.chunks_reused) == (1, 1, 3)
    assert [r["page"] for r in chunks_of(services, doc)] == [1, 2, 3, 4]


def test_a_second_tenant_gets_the_vectors_but_never_sees_the_first_tenants_rows(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder
) -> None:
    settings.database.row_level_security = True
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        acme = text_pdf(tmp_path / "acme" / "handbook.pdf", PAGES)
        globex = tmp_path / "globex" / "handbook.pdf"
        globex.parent.mkdir()
        shutil.copy(acme, globex)
        ledger.ensure_source(svc.conn, "acme-docs", "pdf", "acme")
        ledger.ensure_source(svc.conn, "globex-docs", "pdf", "globex")
        ingest_pdf_paths(svc.pipeline, [str(acme.parent)], source="acme-docs")
        counting_embedder.calls.clear()

        counts = ingest_pdf_paths(svc.pipeline, [str(globex.parent)], source="globex-docs")
        assert counting_embedder.calls == [] and counts.embedded_tokens == 0 and counts.chunks_reused == 3
        theirs, ours = chunks_of(svc, acme), chunks_of(svc, globex)
        assert_copied(ours, theirs)
        assert {r["tenant"] for r in ours} == {"globex"} and {r["tenant"] for r in theirs} == {"acme"}

        for tenant, own in (("globex", globex), ("acme", acme)):
            hits = svc.search("neutron star teaspoon", 10, where=SearchFilter(tenant=tenant))
            assert len(hits) == 3 and {h.uri for h in hits} == {str(own.resolve())}
        with svc.conn.transaction():  # the policy, not the filter: the tenant role sees its own copy only
            svc.conn.execute("SET LOCAL ROLE ragline_tenant")
            svc.conn.execute("SELECT set_config('ragline.tenant', 'globex', true)")
            seen = svc.conn.execute("SELECT DISTINCT tenant FROM chunks").fetchall()
        assert seen == [{"tenant": "globex"}]
    finally:
        svc.close()


@pytest.fixture
def other_model(tmp_path: Path) -> Path:
    """The same weights from another directory: another model identity, so a new generation."""
    source, _ = resolve_model_dir(EmbeddingSettings().model)
    return Path(shutil.copytree(source, tmp_path / "minilm-copy"))


def test_a_new_generation_embeds_text_the_old_one_has(
    tmp_path: Path, services: Services, settings: RaglineSettings, other_model: Path
) -> None:
    text_pdf(tmp_path / "docs" / "a.pdf", PAGES)
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    text_pdf(tmp_path / "more" / "b.pdf", PAGES)
    text_pdf(tmp_path / "more" / "c.pdf", PAGES[:2])

    new_settings = settings.model_copy(
        update={"embedding": settings.embedding.model_copy(update={"model": str(other_model)})}
    )
    model = CountingEmbedder(Embedder(new_settings.embedding))
    new = Services(new_settings, shared_embedder=model)
    try:
        assert new.pipeline.generation.state == "building"
        counts = ingest_pdf_paths(new.pipeline, [str(tmp_path / "more")], source="more")
        # Its three texts are embedded once by the new model (c.pdf's two take b.pdf's new vectors).
        assert model.calls == [3] and counts.chunks_written == 3 and counts.chunks_reused == 2
        assert {r["model_id"] for r in chunks_of(new, tmp_path / "more" / "c.pdf")} == {new.pipeline.model_id()}
    finally:
        new.close()


def test_two_runs_committing_the_same_text_at_once_both_commit(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder
) -> None:
    """A run embeds a text while another run commits the same text: both commit, each document with its own
    rows; a third copy then embeds nothing."""
    first = text_pdf(tmp_path / "one" / "a.pdf", PAGES)
    (tmp_path / "two").mkdir()
    second = Path(shutil.copy(first, tmp_path / "two" / "b.pdf"))
    other = Services(settings, shared_embedder=CountingEmbedder(counting_embedder))
    done: list[Counts] = []

    def other_run_commits_the_same_text() -> None:
        done.append(ingest_pdf_paths(other.pipeline, [str(second.parent)], source="two"))

    racing = ConcurrentWriterEmbedder(counting_embedder, other_run_commits_the_same_text)
    svc = Services(settings, shared_embedder=racing)
    try:
        counts = ingest_pdf_paths(svc.pipeline, [str(first.parent)], source="one")
        [theirs] = done
        assert (counts.committed, theirs.committed, counts.quarantined, theirs.quarantined) == (1, 1, 0, 0)
        assert counts.embedded_tokens > 0 and theirs.embedded_tokens > 0  # neither could see the other's rows
        assert len(chunks_of(svc, first)) == len(chunks_of(svc, second)) == 3

    finally:
        svc.close()
        other.close()
    third = Path(shutil.copy(first, tmp_path / "three.pdf"))
    fresh = Services(settings, shared_embedder=counting_embedder)  # a new process: nothing in its memo
    try:
        again = ingest_pdf_paths(fresh.pipeline, [str(third)], source="three")
        assert again.embedded_tokens == 0 and again.chunks_reused == 3
    finally:
        fresh.close()
