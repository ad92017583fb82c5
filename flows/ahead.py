"""Work ahead of the flow: while the CLI waits for Prefect (a first run starts its server, ~6-9 s; a running
system still imports Prefect and creates the flow run, ~2 s), the plan's first documents are parsed and
chunked in the parse sandbox and their chunks handed to the embedding pool, so the model works through the
wait instead of after it. Nothing is written here: the flow claims, reads, commits and counts every document
as always, takes the parse of the bytes it read when they are the bytes read here (``Pipeline.parsed_ahead``,
by content hash), and the vectors waiting for its chunks' texts as its own model work
(``VectorSource.expect``: tokens counted, not copies). What the flow does not take (a document another run
committed meanwhile, a file changed since) is dropped; a document that fails to parse here is simply left to
the flow, which quarantines it with its reason.

Texts stored already (another document, source or tenant with the same text) are looked up first, as the
flow would, so a copied folder costs no model work here either. Work stops being submitted the moment Prefect
is ready: the run's Prefect states and logs still cover most of it on a running system.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from connectors.base import Load
from connectors.pdf import PdfConnector
from embedding.pool import EmbeddingPool
from flows.canary import CheckedPool
from flows.pdfs import PdfPlan
from flows.pipeline import Pipeline
from flows.preparing import Chunked
from vectorstore.reuse import stored_vectors

log = logging.getLogger(__name__)

MAX_CHUNKS = 16_384
"""Chunks embedded ahead at most (~25 MiB of MiniLM vectors): the wait is seconds, this is never the limit
on a machine that needs it, and memory stays bounded whatever the plan holds."""
MAX_DOCUMENTS = 1024
"""Documents parsed ahead at most (their text waits for the run in memory)."""
POLL_SECONDS = 0.02


@dataclass
class Ahead:
    """What was done ahead: documents parsed, chunks handed to the model, their tokens, and stored texts."""

    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    stored: int = 0


def embed_ahead(pipeline: Pipeline, plan: PdfPlan, ready: Callable[[], bool]) -> Ahead:
    """Parse, chunk and submit the embedding of ``plan``'s documents, in plan order, until ``ready()``."""
    done = Ahead()
    embedder = pipeline.embedder
    if not plan.work or not isinstance(embedder, EmbeddingPool) or ready():
        return done
    connector = PdfConnector([], pipeline.settings.pdf)
    model_id = pipeline.model_id()
    files = deque(plan.work)
    parsing: deque[tuple[tuple[str, str], Future[Chunked]]] = deque()
    parsed: deque[Chunked] = deque()  # waiting for the model canary's check to be over
    depth = max(1, pipeline.parser.lookahead)
    checked = embedder if isinstance(embedder, CheckedPool) else None
    if checked is not None:
        checked.check_soon()  # the first submit would wait for it (a first run's model load): parse meanwhile
    try:
        while not ready() and done.chunks < MAX_CHUNKS:
            while parsed and done.chunks < MAX_CHUNKS and not (checked is not None and checked.checking()):
                _submit(pipeline, embedder, model_id, parsed.popleft(), done)
            while files and len(parsing) < depth and done.documents + len(parsing) < MAX_DOCUMENTS:
                read = _read(connector, Path(files.popleft()))
                if read is not None:
                    key, load = read
                    parsing.append((key, pipeline.submit_parse(load)))
            if not parsing and not parsed:
                break
            if not parsing or not parsing[0][1].done():
                time.sleep(POLL_SECONDS)
                continue
            key, parse = parsing.popleft()
            try:
                chunked = parse.result()
            except Exception:  # noqa: BLE001 - the flow parses it again and quarantines it with its reason
                continue
            done.documents += 1
            pipeline.parsed_ahead[key] = dataclasses.replace(chunked, ahead=True)
            parsed.append(chunked)
    finally:
        for _, future in parsing:
            future.cancel()  # parses not started are dropped; the flow parses what it needs
    if done.chunks:
        log.info(
            "embedding ahead of the flow: %d chunks (%d tokens) of %d documents handed to the model, %d stored",
            done.chunks,
            done.tokens,
            done.documents,
            done.stored,
        )
    return done


def forget(pipeline: Pipeline) -> None:
    """Drop what the run did not take (a document another run committed meanwhile, a file changed since)."""
    pipeline.reuse.forget_ahead()
    pipeline.parsed_ahead.clear()


def _read(connector: PdfConnector, path: Path) -> tuple[tuple[str, str], Load] | None:
    """The document at ``path`` read once, as the run will read it: its key (external id, content hash: the
    run takes this parse only for the very same bytes) and the parse over what was read."""
    try:
        document = connector.document(path)
        if document.read is None:
            return (document.external_id, document.content_hash), document.load
        content = document.read()
    except Exception:  # noqa: BLE001 - gone or unreadable: the run finds out and says so
        return None
    return (document.external_id, content.content_hash), content.load


def _submit(pipeline: Pipeline, embedder: EmbeddingPool, model_id: int, chunked: Chunked, done: Ahead) -> None:
    by_text: dict[str, int] = {}
    for chunk in chunked.chunks:
        by_text.setdefault(chunk.text, chunk.token_count)
    texts = list(by_text)
    stored = stored_vectors(pipeline.conn, model_id, texts)
    todo = [text for position, text in enumerate(texts) if position not in stored]
    done.stored += len(stored)
    if not todo:
        return
    tokens = [by_text[text] for text in todo]
    pipeline.reuse.expect(model_id, todo, tokens, embedder.submit(todo, token_counts=tokens))
    done.chunks += len(todo)
    done.tokens += sum(tokens)
