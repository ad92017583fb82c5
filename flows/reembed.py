"""Re-embedding into a new model generation while search keeps serving the old one, then the switch.

Works from the chunk text already stored (remote records are not fetched again), document by document, each
in its own transaction: an interrupted re-embed resumes with the documents still pending. Chunks longer
than the new model's window are cut again with its tokenizer. The new generation's index is built once,
after its vectors are written, then the serving generation changes in one transaction and the old vectors are
deleted in batches. Free of Prefect: the ``reembed-store`` flow and ``ragline generation migrate`` run it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from embedding.chunking import chunk_pages
from flows.pipeline import Pipeline
from vectorstore import generations, indexing, store
from vectorstore.ids import chunk_id
from vectorstore.store import ChunkRow, GenerationWork

log = logging.getLogger(__name__)


@dataclass
class ReembedResult:
    serving: str | None = None
    target: str | None = None
    planned: int = 0
    """Documents pending when the re-embed started."""
    documents: int = 0
    chunks: int = 0
    recut: int = 0
    """Stored chunks longer than the new model's window, cut again."""
    skipped: int = 0
    """Documents given new-model chunks by a concurrent run meanwhile."""
    index_seconds: float = 0.0
    switched: bool = False
    purged: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _rows(pipeline: Pipeline, work: GenerationWork) -> tuple[list[ChunkRow], int]:
    """The document's chunks for the new model: the stored ones, cut again where they exceed its window."""
    embedder = pipeline.embedder
    limit = embedder.max_seq_length
    counts = embedder.tokenizer.count([c.text for c in work.chunks]) if work.chunks else []
    rows: list[ChunkRow] = []
    recut = 0
    for stored, tokens in zip(work.chunks, counts, strict=True):
        pieces = [(stored.text, tokens)]
        if tokens > limit:
            recut += 1
            cut = chunk_pages(
                [(stored.page, stored.text)], embedder.tokenizer, pipeline.settings.embedding.chunking, limit
            )
            pieces = [(c.text, c.token_count) for c in cut]
        for text, count in pieces:
            index = len(rows)
            rows.append(
                ChunkRow(
                    id=chunk_id(work.source, work.external_id, index, text, pipeline.model_key),
                    chunk_index=index,
                    page=stored.page,
                    text=text,
                    token_count=count,
                    metadata=stored.metadata,
                )
            )
    return rows, recut


def migrate_generation(
    pipeline: Pipeline,
    *,
    batch_documents: int = 32,
    switch: bool = True,
    after_batch: Callable[[ReembedResult], None] | None = None,
) -> ReembedResult:
    """Bring the configured model's generation up to date with the serving one and switch to it.

    A no-op when the configured model already serves. ``after_batch`` is called after each committed batch
    (progress reporting; tests search from it to check search keeps answering).
    """
    started = time.perf_counter()
    conn = pipeline.conn
    target = pipeline.generation
    serving = generations.active(conn)
    conn.commit()
    result = ReembedResult(serving=serving.label if serving else None, target=target.label)
    if target.state == "active" or serving is None:
        result.purged = generations.purge_retired(conn)
        result.seconds = time.perf_counter() - started
        return result
    result.planned = generations.count_pending(conn, serving, target)
    log.info("re-embedding %d documents from %s into %s", result.planned, serving.label, target.label)
    last: list[int] = []
    while True:
        ids = generations.pending_documents(conn, serving, target, batch_documents)
        if not ids:
            break
        if ids == last:
            raise RuntimeError(f"documents {ids} stay pending after their chunks were written: stopping, not looping")
        last = ids
        work = store.generation_work(conn, ids, serving.id)
        prepared = []
        for item in work:
            rows, recut = _rows(pipeline, item)
            result.recut += recut
            prepared.append((item, rows))
        texts = [r for _, rows in prepared for r in rows]
        vectors = pipeline.embedder.embed([r.text for r in texts], token_counts=[r.token_count for r in texts])
        by_id = {r.id: vectors[i] for i, r in enumerate(texts)}
        for item, rows in prepared:
            if store.add_generation_chunks(conn, item.document_id, rows, by_id, target.id, target.fingerprint):
                result.documents += 1
                result.chunks += len(rows)
            else:
                result.skipped += 1
        if after_batch is not None:
            after_batch(result)
    if not switch:
        result.seconds = time.perf_counter() - started
        return result
    current = generations.by_id(conn, target.id)
    conn.commit()
    assert current is not None
    result.index_seconds = indexing.build_index(conn, current, pipeline.index_options)
    generations.switch(conn, current)
    result.switched = True
    log.info("search now served by %s", target.label)
    pipeline.refresh_generation()
    result.purged = generations.purge_retired(conn)
    result.seconds = time.perf_counter() - started
    return result
