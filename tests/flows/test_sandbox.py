"""flows/sandbox.py: parser processes that contain a hostile document (too slow, too big, crashing), on real
worker processes; and the pipeline quarantining such a document while the rest of the run commits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from connectors.base import DocumentError, Page, ParsedDocument, SourceDocument
from flows.planning import resolve_source
from flows.runtime import Services
from flows.sandbox import ParseSandbox, ParseSettings
from flows.settings import RaglineSettings
from tests.support.embedders import CountingEmbedder
from tests.support.loads import dies, flaky, hoards, parsed, refuses, sleeps


@pytest.fixture
def sandbox() -> Iterator[ParseSandbox]:
    box = ParseSandbox(ParseSettings(workers=1, timeout_seconds=1.0, memory_bytes=512 * 1024**2))
    yield box
    box.close()


def test_a_document_parses_in_another_process(sandbox: ParseSandbox) -> None:
    result = sandbox.submit(partial(parsed, "hello")).result(timeout=60)
    assert result.pages == [Page(1, "hello")] and result.metadata["pid"] != os.getpid()


def test_errors_cross_with_their_reason_and_retry_flag(sandbox: ParseSandbox) -> None:
    with pytest.raises(DocumentError) as refused:
        sandbox.submit(refuses).result(timeout=60)
    assert (refused.value.reason, refused.value.retryable) == ("encrypted", False)
    with pytest.raises(DocumentError) as gone:
        sandbox.submit(flaky).result(timeout=60)
    assert (gone.value.reason, gone.value.retryable) == ("unreadable", True)


@pytest.mark.parametrize(
    ("load", "reason", "replaced"),
    [
        (partial(sleeps, 60.0), "parse_timeout", True),
        # The address-space limit makes the allocation fail inside the worker, which reports it and lives on.
        (partial(hoards, 1024**3), "parse_memory", False),
        (dies, "parse_crashed", True),
    ],
    ids=["too-slow", "too-big", "crash"],
)
def test_a_document_over_a_limit_fails_alone_and_the_next_one_parses(
    sandbox: ParseSandbox, load: partial[ParsedDocument], reason: str, replaced: bool
) -> None:
    first = sandbox.submit(partial(parsed, "before")).result(timeout=60).metadata["pid"]
    with pytest.raises(DocumentError) as failed:
        sandbox.submit(load).result(timeout=60)
    assert failed.value.reason == reason
    after = sandbox.submit(partial(parsed, "after")).result(timeout=60)
    assert after.pages == [Page(1, "after")] and (after.metadata["pid"] != first) is replaced


def test_without_isolation_documents_parse_here() -> None:
    box = ParseSandbox(ParseSettings(isolate=False))
    assert box.submit(partial(parsed, "here")).result().metadata["pid"] == os.getpid() and box.lookahead == 0
    with pytest.raises(DocumentError, match="no password"):
        box.submit(refuses).result()


def _document(name: str, load: partial[ParsedDocument] | object) -> SourceDocument:
    return SourceDocument(external_id=name, uri=name, content_hash=f"h-{name}", load=load)  # type: ignore[arg-type]


def test_the_pipeline_quarantines_a_hostile_document_and_commits_the_rest(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder
) -> None:
    settings.parsing = ParseSettings(workers=2, timeout_seconds=1.0, memory_bytes=512 * 1024**2)
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        source = resolve_source(svc.conn, settings, "mixed", "pdf")
        documents = [
            _document("good-1", partial(parsed, "Lighthouses guide ships past the reef at night.")),
            _document("bomb", partial(sleeps, 60.0)),
            _document("hoard", partial(hoards, 1024**3)),
            _document("good-2", partial(parsed, "Tide tables give the height of water by the hour.")),
        ]
        counts = svc.pipeline.ingest(source, documents)
        rows = svc.conn.execute(
            "SELECT external_id, status, error_reason FROM documents ORDER BY external_id"
        ).fetchall()
        svc.conn.commit()
    finally:
        svc.close()
    assert (counts.committed, counts.quarantined) == (2, 2)
    assert {r["external_id"]: (r["status"], r["error_reason"]) for r in rows} == {
        "bomb": ("quarantined", "parse_timeout"),
        "good-1": ("committed", None),
        "good-2": ("committed", None),
        "hoard": ("quarantined", "parse_memory"),
    }
