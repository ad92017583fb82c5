"""Known-item search quality against embedding cost: a ~18-word passage taken from page p of file f must bring
back (f, p) in the top k. For each chunking setting, the same PDFs are ingested into a fresh store and the same
passages searched in vector and hybrid mode; printed beside what the setting costs the model (chunks and tokens
embedded, and tokens embedded per token of text).

    python bench/known_item.py DIR_OR_PDFS... [--queries 800] [--settings 128/0,160/32,256/0]

One float32 model (the plain ``Embedder``) embeds documents and queries for every setting, so the settings
differ only in their chunks. Each setting is compared with the best one on the same passages (paired): the
difference of hit rates and its 95% interval, so "within noise" has a number.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pypdf import PdfReader

from connectors.pdf import discover
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from embedding.chunking import ChunkingSettings
from embedding.model import Embedder, EmbeddingSettings
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import load_settings
from vectorstore import search
from vectorstore.embedded import stop_embedded
from vectorstore.settings import SearchSettings

Mode = Literal["hybrid", "vector"]
MODES: tuple[Mode, ...] = ("hybrid", "vector")

Passage = tuple[str, Path, int]
"""A query: its text, and the file and 1-based page it was taken from."""


def sample_passages(files: list[Path], n: int, words: int, rng: random.Random) -> list[Passage]:
    """Passages from the raw pypdf text (not ragline's cleaned text), as an outside checker would take them."""
    pages: list[tuple[Path, int, list[str]]] = []
    for f in files:
        for i, page in enumerate(PdfReader(f).pages, start=1):
            tokens = (page.extract_text() or "").split()
            if len(tokens) >= words * 2:
                pages.append((f, i, tokens))
    out: list[Passage] = []
    while len(out) < n:
        f, p, tokens = rng.choice(pages)
        start = rng.randrange(0, len(tokens) - words)
        passage = tokens[start : start + words]
        # A person quotes prose, not the dot leaders of a table of contents: at least 60% of the words
        # must hold letters.
        if sum(any(ch.isalpha() for ch in w) for w in passage) >= 0.6 * words:
            out.append((" ".join(passage), f, p))
    return out


def parse_setting(text: str) -> ChunkingSettings:
    """``"160/32"``: 160-token chunks with 32 tokens of overlap."""
    size, _, overlap = text.partition("/")
    return ChunkingSettings(chunk_tokens=int(size), overlap_tokens=int(overlap or 0))


def text_tokens(files: list[Path], embedder: Embedder) -> int:
    """Tokens of the text ragline parses from ``files`` (its own extractor, no special tokens): what one pass
    of the model over the text would cost."""
    total = 0
    for f in files:
        for page in parse_pdf(f, PdfSettings()).pages:
            total += len(embedder.tokenizer.offsets(page.text))
    return total


@dataclass(frozen=True)
class Result:
    setting: ChunkingSettings
    chunks: int
    embedded_tokens: int
    ingest_seconds: float
    hits: dict[str, list[bool]]
    """Per mode, one entry per passage: was its page in the top k."""

    def recall(self, mode: str) -> float:
        return sum(self.hits[mode]) / len(self.hits[mode])


def measure(
    files: list[Path], passages: list[Passage], setting: ChunkingSettings, embedder: Embedder, k: int
) -> Result:
    """Ingest ``files`` with ``setting`` into a fresh RAGLINE_HOME and search every passage in each mode."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = load_settings({"RAGLINE_HOME": str(home)})
        settings.embedding.chunking = setting
        svc = Services(settings, shared_embedder=embedder)
        try:
            started = time.perf_counter()
            counts = ingest_pdf_paths(svc.pipeline, [str(f) for f in files])
            seconds = time.perf_counter() - started
            vectors = embedder.embed([text for text, _, _ in passages])
            hits: dict[str, list[bool]] = {}
            for mode in MODES:
                search_settings = SearchSettings(mode=mode)
                hits[mode] = [
                    any(Path(h.uri) == f.resolve() and h.page == p for h in found)
                    for (text, f, p), vector in zip(passages, vectors, strict=True)
                    for found in [search.search(svc.conn, vector, k, text=text, settings=search_settings)]
                ]
        finally:
            svc.close()
            stop_embedded(home)
    return Result(setting, counts.chunks_written, counts.embedded_tokens, seconds, hits)


def paired_difference(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Mean of ``a - b`` over the same passages and the half-width of its 95% interval (normal approximation
    of the paired differences)."""
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, 1.96 * math.sqrt(variance / n)


def report(results: list[Result], text_total: int, k: int) -> None:
    best = {mode: max(results, key=lambda r: r.recall(mode)) for mode in MODES}
    print(f"tokens of text (ragline's extraction, no special tokens): {text_total}")
    header = "| setting (tokens / overlap) | chunks | tokens embedded | x tokens of text |"
    header += "".join(f" recall@{k} {mode} (vs best, 95% CI) |" for mode in MODES) + " ingest |"
    print(header)
    print("|---" * (4 + len(MODES) + 1) + "|")
    for r in results:
        cells = [
            f"{r.setting.chunk_tokens} / {r.setting.overlap_tokens}",
            f"{r.chunks:,}",
            f"{r.embedded_tokens:,}",
            f"{r.embedded_tokens / text_total:.2f}",
        ]
        for mode in MODES:
            diff, half = paired_difference(r.hits[mode], best[mode].hits[mode])
            cells.append(f"{r.recall(mode):.3f} ({diff:+.3f} ± {half:.3f})")
        cells.append(f"{r.ingest_seconds:.1f} s")
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--queries", type=int, default=800)
    ap.add_argument("--words", type=int, default=18)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument(
        "--settings", default="128/0,160/32,192/16,256/0,256/32", help="chunk tokens / overlap, comma-separated"
    )
    args = ap.parse_args()
    files = discover([Path(p) for p in args.paths]).files
    passages = sample_passages(files, args.queries, args.words, random.Random(7))
    embedder = Embedder(EmbeddingSettings(precision="float32"))
    text_total = text_tokens(files, embedder)
    print(f"{len(files)} files, {len(passages)} passages of {args.words} words, top-{args.k}")
    results: list[Result] = []
    for setting in [parse_setting(s) for s in args.settings.split(",")]:
        result = measure(files, passages, setting, embedder, args.k)
        recalls = ", ".join(f"{mode} {result.recall(mode):.3f}" for mode in MODES)
        print(f"  {setting.chunk_tokens}/{setting.overlap_tokens}: {result.chunks} chunks, {recalls}", flush=True)
        results.append(result)
    report(results, text_total, args.k)


if __name__ == "__main__":
    main()
