"""What a parser process makes of one document: its pages parsed, then cut into chunks with the model's own
tokenizer. Chunking runs there, not in the ingesting process, so the parse limits cover it too (a file whose
text is tens of millions of characters of junk costs the tokenizer what a parse-time bomb costs the parser)
and it runs beside the embedding instead of before it. Kept light to import: parser processes load it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from connectors.base import DocumentError, Load, ParsedDocument
from embedding.chunking import Chunk, ChunkingSettings, ChunkTooLongError, chunk_pages
from embedding.model import ModelTokenizer

_tokenizers: dict[str, ModelTokenizer] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Chunked:
    """A document parsed and chunked, with when each step started and ended (``time.time_ns()``: wall clock,
    comparable across the host's processes), for its trace and phase times."""

    document: ParsedDocument
    chunks: list[Chunk]
    started_ns: int = 0
    parsed_ns: int = 0
    chunked_ns: int = 0
    ahead: bool = False
    """Parsed ahead of the flow (``flows.ahead``): before the run claimed the document, so its parse and
    chunk spans start before the document's."""


def _tokenizer(model_dir: str) -> ModelTokenizer:
    """One tokenizer per model and process, loaded on the first document (a few tens of milliseconds)."""
    with _lock:
        tokenizer = _tokenizers.get(model_dir)
        if tokenizer is None:
            tokenizer = _tokenizers[model_dir] = ModelTokenizer(Path(model_dir))
        return tokenizer


def parse_and_chunk(load: Load, model_dir: str, chunking: ChunkingSettings, max_tokens: int) -> Chunked:
    """Parse with ``load`` and chunk the pages for the model in ``model_dir`` (its window: ``max_tokens``)."""
    started = time.time_ns()
    document = load()
    parsed = time.time_ns()
    try:
        chunks = chunk_pages([(p.number, p.text) for p in document.pages], _tokenizer(model_dir), chunking, max_tokens)
    except ChunkTooLongError as err:
        raise DocumentError("oversize_text", str(err)) from err
    return Chunked(document, chunks, started, parsed, time.time_ns())
