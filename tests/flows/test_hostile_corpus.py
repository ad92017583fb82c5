"""A folder of hostile PDFs (``tests/support/hostile_pdfs.py``) beside good files, ingested in one run with
the real store, model and parser processes: the run ends, the good files are searchable, each hostile file
is quarantined with the reason its attack earns or skipped with a warning, and a second run parses nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.base import ParsedDocument
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.sandbox import ParseSettings
from flows.settings import RaglineSettings
from tests.support.embedders import CountingEmbedder
from tests.support.hostile_pdfs import GOOD_PAGES, SQL_NAME, write_corpus

OUTCOMES = {
    "lighthouse": ("committed", None),
    "tides": ("committed", None),
    "nested": ("committed", None),  # x.pdf/inside.pdf: a folder named .pdf is walked, never read
    "sql": ("committed", None),
    # pdfium lays out ~0.1 s a page, then pypdf re-reads each page (one-letter words look damaged): ~6 s each.
    "parse-time-bomb.pdf": ("quarantined", "parse_timeout"),
    # pdfium inflates the stream whole: an allocation over the address-space limit, and pdfium aborts.
    "zlib-bomb.pdf": ("quarantined", "parse_crashed"),
    # pdfium's page walk gives up at its depth limit (the page fails to load); pypdf detects the cycle.
    "cyclic-page-tree.pdf": ("quarantined", "corrupt"),
    # pdfium refuses the over-deep object, so page 1 fails to load.
    "nested-arrays.pdf": ("quarantined", "corrupt"),
    # Both parsers remember the xref sections they followed: the loop is harmless and the page readable.
    "xref-prev-loop.pdf": ("committed", None),
    # The page count comes from the page tree's /Count: refused before any page is read.
    "many-pages.pdf": ("quarantined", "too_large"),
}


@pytest.mark.slow  # bombs run into their 20 s parse limit (~20 s)
def test_a_hostile_folder_is_contained_and_the_good_files_ingested(
    tmp_path: Path,
    settings: RaglineSettings,
    counting_embedder: CountingEmbedder,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = write_corpus(tmp_path / "corpus")
    settings.parsing = ParseSettings(workers=2, timeout_seconds=20.0, memory_bytes=1024**3)
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        with caplog.at_level(logging.WARNING, logger="connectors.pdf"):
            first = ingest_pdf_paths(svc.pipeline, [tmp_path / "corpus"])
        rows = svc.conn.execute(
            "SELECT external_id, status, error_reason FROM documents ORDER BY external_id"
        ).fetchall()
        hits = {name: svc.search(pages[0], 1) for name, pages in GOOD_PAGES.items()}
        tables = svc.conn.execute("SELECT to_regclass('documents') IS NOT NULL AS present").fetchone()
        svc.conn.commit()

        submitted: list[Callable[[], ParsedDocument]] = []
        submit = svc.pipeline.parser.submit

        def recording(load: Callable[[], ParsedDocument]) -> object:
            submitted.append(load)
            return submit(load)

        monkeypatch.setattr(svc.pipeline.parser, "submit", recording)
        second = ingest_pdf_paths(svc.pipeline, [tmp_path / "corpus"])
        again = svc.conn.execute(
            "SELECT external_id, status, error_reason FROM documents ORDER BY external_id"
        ).fetchall()
        svc.conn.commit()
    finally:
        svc.close()

    by_path = {str(paths[name]): outcome for name, outcome in OUTCOMES.items()}  # no special file among them
    assert {r["external_id"]: (r["status"], r["error_reason"]) for r in rows} == by_path
    assert (first.committed, first.quarantined) == (5, 5)

    for name, found in hits.items():  # each good file is found by its own words, SQL-named one included
        assert [hit.uri for hit in found] == [str(paths[name])]
    assert paths["sql"].name == SQL_NAME and tables is not None and tables["present"]

    skipped = {r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")}
    assert skipped == {
        f"skipped {paths['fifo.pdf']}: it is a FIFO, not a file",
        f"skipped {paths['dev-zero.pdf']}: it is a character device (through a link), not a file",
    }

    # Nothing new to parse: committed files are unchanged, quarantined ones stay so until they change.
    assert submitted == [] and again == rows
    assert (second.seen, second.unchanged, second.still_quarantined, second.quarantined) == (10, 5, 5, 0)
