"""flows/pdfs.py: a PDF folder planned without reading unchanged files, every file that needs work read once,
the plan handed over intact, against the real store and model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import connectors.pdf
from flows.counts import Counts
from flows.pdfs import PdfPlan, ingest_pdf_paths, plan_pdfs, read_plan, write_plan
from flows.planning import resolve_source
from flows.runtime import Services
from flows.settings import RaglineSettings
from tests.support.embedders import CountingEmbedder
from tests.support.pdfgen import text_pdf
from tests.support.reads import count_reads

PAGES = {
    "lava": ["Basaltic lava flows cool into columns.", "Pahoehoe has a smooth ropy surface."],
    "bread": ["A sourdough starter needs daily feeding.", "Proofing in the fridge slows fermentation."],
    "tides": ["Spring tides follow new and full moons.", "Neap tides have the smallest range."],
}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file read through ``Path.read_bytes`` (how the PDF connector reads), in order. Files are trusted
    by their stat at once: the racy window (a write within the timestamp tick) is a clock seam, closed here."""
    monkeypatch.setattr(connectors.pdf, "RACY_SECONDS", 0.0)
    return count_reads(monkeypatch)


def corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {name: text_pdf(root / f"{name}.pdf", pages) for name, pages in PAGES.items()}


def test_each_file_is_read_once_and_unchanged_files_not_at_all(
    tmp_path: Path, services: Services, counting_embedder: CountingEmbedder, reads: list[Path]
) -> None:
    files = corpus(tmp_path / "docs")
    first = ingest_pdf_paths(services.pipeline, [tmp_path / "docs"])
    assert first.committed == 3 and sorted(reads) == sorted(files.values())
    assert first.bytes_read == sum(f.stat().st_size for f in files.values())

    reads.clear()
    again = ingest_pdf_paths(services.pipeline, [tmp_path / "docs"])
    assert reads == [] and again.as_dict() == {**Counts().as_dict(), "seen": 3, "unchanged": 3}

    # Touched without a change (a copy over itself): read once, found identical, nothing embedded; the new
    # stat key is remembered, so the run after reads nothing.
    os.utime(files["lava"])
    counting_embedder.calls.clear()
    touched = ingest_pdf_paths(services.pipeline, [tmp_path / "docs"])
    assert reads == [files["lava"]] and (touched.unchanged, touched.committed) == (3, 0)
    assert counting_embedder.calls == []
    reads.clear()
    assert ingest_pdf_paths(services.pipeline, [tmp_path / "docs"]).unchanged == 3 and reads == []

    # One file of three changed: that file alone is read, once.
    text_pdf(files["tides"], [*PAGES["tides"], "King tides are the highest of the year."])
    changed = ingest_pdf_paths(services.pipeline, [tmp_path / "docs"])
    assert reads == [files["tides"]] and (changed.changed, changed.committed, changed.unchanged) == (1, 1, 2)
    assert changed.bytes_read == files["tides"].stat().st_size


def test_rehash_reads_every_file(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder, reads: list[Path]
) -> None:
    files = corpus(tmp_path / "docs")
    settings.pdf.rehash = True
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
        reads.clear()
        again = ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
    finally:
        svc.close()
    assert sorted(reads) == sorted(files.values()) and (again.unchanged, again.committed) == (3, 0)


def test_a_plan_survives_its_file_and_lists_deletions(tmp_path: Path, services: Services, reads: list[Path]) -> None:
    files = corpus(tmp_path / "docs")
    ingest_pdf_paths(services.pipeline, [tmp_path / "docs"])
    files["bread"].unlink()
    text_pdf(tmp_path / "docs" / "moss.pdf", ["Moss grows on the north side, mostly."])
    source = resolve_source(services.conn, services.settings, "pdf", "pdf")
    reads.clear()

    plan = plan_pdfs(services.pipeline, source, [tmp_path / "docs"])
    path = write_plan(services.settings.home, plan)
    assert path.parent == services.settings.home / "plans"
    back = read_plan(path)

    assert back == plan and isinstance(back, PdfPlan)
    assert back.work == [str(tmp_path / "docs" / "moss.pdf")] and len(back.deleted) == 1
    assert (back.counts.seen, back.counts.unchanged) == (3, 2) and reads == []  # planning reads no file


def test_changing_the_pdf_extractor_reprocesses_committed_files_and_reuses_their_chunks(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder
) -> None:
    """The extractor is part of the pipeline fingerprint: another extractor may read other text, so committed
    files are parsed again; chunks whose text came out the same keep their vectors (ids derive from text)."""
    corpus(tmp_path / "docs")
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        first = ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
        assert first.committed == 3 and first.chunks_written > 0
        assert ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"]).unchanged == 3
    finally:
        svc.close()

    settings.pdf.extractor = "pypdf"
    counting_embedder.calls.clear()
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        switched = ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
        again = ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
    finally:
        svc.close()
    assert (switched.committed, switched.unchanged) == (3, 0)
    assert switched.chunks_reused == first.chunks_written
    assert sum(counting_embedder.calls) == 0 and switched.embedded_tokens == 0
    assert (again.unchanged, again.committed) == (3, 0)
