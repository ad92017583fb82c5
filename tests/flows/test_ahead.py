"""Work ahead of the flow (``flows.ahead``), with the real model in a real embedding pool and the real
embedded Postgres: what was embedded while the CLI waited for Prefect is the run's own model work (tokens
counted, never embedded twice, the same vectors), a document that fails to parse ahead is still quarantined
by the run, and a text the store holds already costs no model work ahead either."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedding.devices import Device
from embedding.model import Embedder, EmbeddingSettings
from embedding.pool import EmbeddingPool
from flows.ahead import embed_ahead, forget
from flows.canary import CheckedPool
from flows.counts import Counts
from flows.pdfs import plan_pdfs, run_pdf_plan
from flows.planning import resolve_source
from flows.runs import recorded_run
from flows.runtime import Services
from flows.settings import RaglineSettings
from tests.support.pdfgen import text_pdf
from vectorstore.reuse import VectorSource

CPU = Device(key="cpu", torch_device="cpu", kind="cpu", label="test cpu", threads=2)
TOPICS = [
    ["Tidal bores run up the river twice a month when the spring tide meets the narrowing estuary."],
    ["Beekeepers smoke the hive before lifting the frames so the guard bees do not sound the alarm."],
    ["A sextant measures the angle between the horizon and the sun at local noon to find the latitude."],
]


@pytest.fixture
def pooled(settings: RaglineSettings, embedder: Embedder) -> Iterator[tuple[Services, EmbeddingPool]]:
    """Services whose embedder is a real pool over the session's model (as the CLI's is)."""
    pool = EmbeddingPool(EmbeddingSettings(), embedder=embedder, devices=[CPU])
    svc = Services(settings, shared_embedder=pool)
    yield svc, pool
    svc.close()
    pool.close()


def run(svc: Services, paths: list[Path], *, ahead: bool, source: str = "pdf") -> tuple[Counts, int]:
    """A recorded PDF run as the CLI makes it (plan, work ahead until told to stop, the plan's steps);
    returns its counts and the tokens the pool embedded during the run's own steps."""
    pool = svc.embedder
    assert isinstance(pool, EmbeddingPool)
    ref = resolve_source(svc.conn, svc.settings, source, "pdf")
    plan = plan_pdfs(svc.pipeline, ref, [str(p) for p in paths])
    if ahead:
        embed_ahead(svc.pipeline, plan, lambda: False)
    idle(pool)  # what was handed to the pool ahead is done: the pool's counts below are the run's own
    before = sum(d.tokens for d in pool.stats().devices)
    with recorded_run(svc.pipeline, ref) as recorded:
        run_pdf_plan(svc.pipeline, plan, recorded.counts)
    tokens = sum(d.tokens for d in pool.stats().devices) - before
    forget(svc.pipeline)
    return recorded.counts, tokens


def idle(pool: EmbeddingPool) -> None:
    deadline = time.monotonic() + 120
    while pool.stats().pending_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats().pending_requests == 0


def vectors(svc: Services, source: str) -> dict[str, np.ndarray]:
    rows = svc.conn.execute(
        "SELECT c.text, c.embedding FROM chunks c JOIN documents d ON d.id = c.document_id "
        "JOIN sources s ON s.id = d.source_id WHERE s.name = %s",
        (source,),
    ).fetchall()
    svc.conn.commit()
    return {r["text"]: r["embedding"].to_numpy() for r in rows}


def test_chunks_embedded_ahead_are_the_runs_own_work_done_once(
    tmp_path: Path, pooled: tuple[Services, EmbeddingPool], embedder: Embedder
) -> None:
    svc, _ = pooled
    docs = [text_pdf(tmp_path / f"doc{i}.pdf", pages) for i, pages in enumerate(TOPICS)]
    counts, during_run = run(svc, docs, ahead=True)
    assert (counts.committed, counts.chunks_reused) == (3, 0) and counts.chunks_written > 0
    assert counts.embedded_tokens > 0  # counted as the run's model work, not as copies
    assert during_run == 0  # everything the run wrote was embedded ahead: nothing twice
    assert svc.pipeline.parsed_ahead == {}  # and the run took every parse made ahead instead of parsing again

    # Every token the run wrote was embedded once, by the model, into vectors of these very texts.
    rows = svc.conn.execute("SELECT text, token_count, embedding FROM chunks").fetchall()
    svc.conn.commit()
    assert counts.embedded_tokens == sum(r["token_count"] for r in rows)
    direct = embedder.embed([r["text"] for r in rows])
    stored = np.stack([r["embedding"].to_numpy() for r in rows])
    assert np.min(np.sum(direct * stored, axis=1)) > 0.99


def test_a_file_changed_after_its_parse_ahead_is_parsed_again_by_the_run(
    tmp_path: Path, pooled: tuple[Services, EmbeddingPool]
) -> None:
    svc, _ = pooled
    doc = text_pdf(tmp_path / "notes.pdf", TOPICS[0])
    ref = resolve_source(svc.conn, svc.settings, "pdf", "pdf")
    plan = plan_pdfs(svc.pipeline, ref, [str(doc)])
    assert embed_ahead(svc.pipeline, plan, lambda: False).documents == 1
    text_pdf(doc, TOPICS[2])  # rewritten between the work ahead and the run
    with recorded_run(svc.pipeline, ref) as recorded:
        run_pdf_plan(svc.pipeline, plan, recorded.counts)
    forget(svc.pipeline)
    assert recorded.counts.committed == 1 and svc.pipeline.parsed_ahead == {}
    texts = [text for text in vectors(svc, "pdf")]
    assert texts and all("sextant" in text for text in texts)  # what the run read, not what was parsed ahead


def test_stopping_at_once_leaves_all_the_work_to_the_run(
    tmp_path: Path, pooled: tuple[Services, EmbeddingPool]
) -> None:
    svc, _ = pooled
    docs = [text_pdf(tmp_path / f"doc{i}.pdf", pages) for i, pages in enumerate(TOPICS)]
    ref = resolve_source(svc.conn, svc.settings, "pdf", "pdf")
    plan = plan_pdfs(svc.pipeline, ref, [str(p) for p in docs])
    done = embed_ahead(svc.pipeline, plan, lambda: True)
    assert (done.documents, done.chunks) == (0, 0)


def test_a_broken_pdf_is_skipped_ahead_and_quarantined_by_the_run(
    tmp_path: Path, pooled: tuple[Services, EmbeddingPool]
) -> None:
    svc, _ = pooled
    good = text_pdf(tmp_path / "good.pdf", TOPICS[0])
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer <<>>\n%%EOF")
    ref = resolve_source(svc.conn, svc.settings, "pdf", "pdf")
    plan = plan_pdfs(svc.pipeline, ref, [str(good), str(broken)])
    done = embed_ahead(svc.pipeline, plan, lambda: False)
    assert done.documents == 1 and done.chunks > 0
    with recorded_run(svc.pipeline, ref) as recorded:
        run_pdf_plan(svc.pipeline, plan, recorded.counts)
    assert (recorded.counts.committed, recorded.counts.quarantined) == (1, 1)
    reason = svc.conn.execute("SELECT error_reason FROM documents WHERE status = 'quarantined'").fetchone()
    assert reason is not None and reason["error_reason"]


def test_texts_the_store_holds_cost_no_model_work_ahead(tmp_path: Path, pooled: tuple[Services, EmbeddingPool]) -> None:
    svc, _ = pooled
    docs = [text_pdf(tmp_path / f"doc{i}.pdf", pages) for i, pages in enumerate(TOPICS)]
    run(svc, docs, ahead=True)
    copies = tmp_path / "copies"
    copies.mkdir()
    for doc in docs:
        shutil.copy(doc, copies / f"copy of {doc.name}")
    ref = resolve_source(svc.conn, svc.settings, "pdf", "pdf")
    plan = plan_pdfs(svc.pipeline, ref, [str(copies)])
    done = embed_ahead(svc.pipeline, plan, lambda: False)
    assert done.documents == 3 and done.chunks == 0 and done.stored > 0
    with recorded_run(svc.pipeline, ref) as recorded:
        run_pdf_plan(svc.pipeline, plan, recorded.counts)
    assert recorded.counts.embedded_tokens == 0 and recorded.counts.chunks_reused == done.stored
    assert vectors(svc, "pdf")


class _Failed:
    def result(self) -> np.ndarray:
        raise RuntimeError("the device went away")


def test_an_embedding_that_failed_ahead_is_done_again_by_the_run(embedder: Embedder) -> None:
    asked: list[list[str]] = []

    def embed(texts: object, tokens: object) -> np.ndarray:
        asked.append(list(texts))  # type: ignore[call-overload]
        return embedder.embed(list(texts))  # type: ignore[call-overload]

    source = VectorSource(embed)
    source.expect(1, ["a lighthouse keeper's log"], [9], _Failed())
    assert source.forget_ahead() == 1
    source.expect(1, ["a lighthouse keeper's log"], [9], _Failed())
    assert source._take_ahead(1, "a lighthouse keeper's log") is None
    assert source._take_ahead(1, "a lighthouse keeper's log") is None  # taken once, then gone


def test_documents_are_parsed_ahead_while_the_model_canary_is_checked(
    tmp_path: Path, settings: RaglineSettings, embedder: Embedder
) -> None:
    """A first run's canary waits for the model's load: the work ahead parses meanwhile instead of waiting in
    its first submit, and hands the chunks to the model once the check is over."""
    checked = threading.Event()
    release = threading.Event()

    def slow_check(pool: object) -> bool:
        release.wait(30)
        checked.set()
        return True

    pool = CheckedPool(EmbeddingSettings(), starter=slow_check, embedder=embedder, devices=[CPU])
    svc = Services(settings, shared_embedder=pool)
    try:
        docs = [text_pdf(tmp_path / f"doc{i}.pdf", pages) for i, pages in enumerate(TOPICS)]
        ref = resolve_source(svc.conn, svc.settings, "pdf", "pdf")
        plan = plan_pdfs(svc.pipeline, ref, [str(p) for p in docs])
        parsed_during_check: list[bool] = []

        def ready() -> bool:
            if not checked.is_set() and len(svc.pipeline.parsed_ahead) == len(docs):
                parsed_during_check.append(True)
                release.set()  # every document parsed while the check still ran: let it finish
            return False

        done = embed_ahead(svc.pipeline, plan, ready)
        assert parsed_during_check and checked.is_set()
        assert done.documents == 3 and done.chunks > 0  # submitted once the check was over
        assert pool.stats().duplicates == 0
        idle(pool)
        with recorded_run(svc.pipeline, ref) as recorded:
            run_pdf_plan(svc.pipeline, plan, recorded.counts)
        forget(svc.pipeline)
        assert recorded.counts.committed == 3 and recorded.counts.embedded_tokens == done.tokens
    finally:
        release.set()
        svc.close()
        pool.close()
