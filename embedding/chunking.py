"""Token-aware chunking: pure functions over text and token offsets.

Chunks never cross a page (each keeps its page for lineage) and never exceed the model's window: cutting by
words is not enough (a third of word-sized chunks overflowed a 256-token window in a realistic corpus), so
sizes are counted with the model's own tokenizer and every chunk is re-counted before it is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SENTENCE_END = (".", "!", "?", ":", ";", "\n", "。", "！", "？")


class ChunkingSettings(BaseModel):
    """How pages are cut for the model. The defaults (128 tokens, no overlap) were measured against others on
    real PDFs (known-item recall@5, hybrid and vector, against tokens embedded: docs/benchmarks.md): they
    embed each token of text about once, where 160/32 embedded it 1.24 times, and their recall is the best or
    within noise of it. Changing either re-chunks and re-embeds committed documents on their next run (the
    pipeline's fingerprint includes them)."""

    model_config = ConfigDict(extra="forbid")

    chunk_tokens: int = Field(default=128, ge=16, description="Target tokens per chunk (capped by the model's window).")
    overlap_tokens: int = Field(
        default=0,
        ge=0,
        description="Tokens shared by consecutive chunks of a page (each costs embedding work; none measured as "
        "good as 32 for known-item recall).",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.chunk_tokens // 2:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be below half of chunk_tokens ({self.chunk_tokens})"
            )
        return self


class TokenCounter(Protocol):
    """The slice of a tokenizer chunking needs."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of ``text``, without special tokens."""
        ...

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in the model, special tokens included."""
        ...


@dataclass(frozen=True)
class Chunk:
    index: int
    page: int | None
    text: str
    token_count: int


class ChunkTooLongError(ValueError):
    """A chunk that cannot be cut below the model's window (never expected on real text)."""


def _is_word_start(text: str, offsets: Sequence[tuple[int, int]], k: int) -> bool:
    return k == 0 or offsets[k - 1][1] < offsets[k][0]


def _pick_end(text: str, offsets: Sequence[tuple[int, int]], start: int, limit: int, min_end: int) -> int:
    """Best exclusive token end in [min_end, limit]: a sentence end in the last third of the window, else a
    word boundary, else the hard limit. ``min_end`` lies past the previous chunk's end, so every chunk adds
    new text even before a run of text longer than the window (a long URL)."""
    n = len(offsets)
    if limit >= n:
        return n
    floor = max(min_end, start + max(1, (limit - start) * 2 // 3))
    for k in range(limit, floor - 1, -1):
        if _is_word_start(text, offsets, k) and text[offsets[k - 1][0] : offsets[k - 1][1]].endswith(_SENTENCE_END):
            return k
    for k in range(limit, min_end - 1, -1):
        if _is_word_start(text, offsets, k):
            return k
    return limit


def _windows(text: str, offsets: Sequence[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    n = len(offsets)
    start, prev_end = 0, 0
    while start < n:
        end = _pick_end(text, offsets, start, min(start + size, n), max(start + 1, prev_end + 1))
        spans.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        word = nxt
        while word < end and not _is_word_start(text, offsets, word):
            word += 1
        # Scripts without spaces (CJK, base64, long URLs) have no word start: overlap mid-word then.
        start = word if word < end else nxt
        prev_end = end
    return spans


def chunk_pages(
    pages: Sequence[tuple[int | None, str]],
    counter: TokenCounter,
    settings: ChunkingSettings,
    max_tokens: int,
) -> list[Chunk]:
    """Split pages into overlapping chunks of at most ``max_tokens`` model tokens (special tokens included).

    ``max_tokens`` is the model's window; the target size is ``settings.chunk_tokens`` capped by it.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens={max_tokens}: a model window this small cannot hold useful chunks")
    size = min(settings.chunk_tokens, max_tokens - 2)
    overlap = max(0, min(settings.overlap_tokens, size // 2 - 1))
    drafts: list[tuple[int | None, str]] = []
    for page, text in pages:
        offsets = counter.offsets(text)
        for a, b in _windows(text, offsets, size, overlap):
            piece = text[offsets[a][0] : offsets[b - 1][1]].strip()
            if piece:
                drafts.append((page, piece))

    counts = counter.count([t for _, t in drafts]) if drafts else []
    chunks: list[Chunk] = []
    for (page, piece), count in zip(drafts, counts, strict=True):
        for text, tokens in _fit(piece, count, counter, max_tokens):
            chunks.append(Chunk(index=len(chunks), page=page, text=text, token_count=tokens))
    return chunks


def _fit(text: str, count: int, counter: TokenCounter, max_tokens: int) -> list[tuple[str, int]]:
    """Re-tokenising a span can differ from the token count of the page it came from; halve until it fits."""
    if count <= max_tokens:
        return [(text, count)]
    cut = text.rfind(" ", 0, len(text) // 2 + 1)
    if cut <= 0:
        cut = len(text) // 2
    if cut <= 0:
        raise ChunkTooLongError(f"cannot cut a {count}-token span below {max_tokens} tokens")
    parts = [text[:cut].strip(), text[cut:].strip()]
    parts = [p for p in parts if p]
    result: list[tuple[str, int]] = []
    for part, part_count in zip(parts, counter.count(parts), strict=True):
        result.extend(_fit(part, part_count, counter, max_tokens))
    return result
