"""Known-item search quality: a ~18-word passage taken from page p of file f must bring back (f, p) in the
top k. Prints the hit rate per chunking configuration, measured on the same PDFs in one run.

    python bench/known_item.py DIR_OR_PDFS... [--queries 200] [--sizes 128,160,256]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from pypdf import PdfReader

from connectors.pdf import discover
from embedding.chunking import ChunkingSettings
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import load_settings
from vectorstore import search
from vectorstore.settings import SearchSettings


def sample_passages(files: list[Path], n: int, words: int, rng: random.Random) -> list[tuple[str, Path, int]]:
    """Passages from the raw pypdf text (not ragline's cleaned text), as an outside checker would take them."""
    pages: list[tuple[Path, int, list[str]]] = []
    for f in files:
        for i, page in enumerate(PdfReader(f).pages, start=1):
            tokens = (page.extract_text() or "").split()
            if len(tokens) >= words * 2:
                pages.append((f, i, tokens))
    out: list[tuple[str, Path, int]] = []
    while len(out) < n:
        f, p, tokens = rng.choice(pages)
        start = rng.randrange(0, len(tokens) - words)
        passage = tokens[start : start + words]
        # A person quotes prose, not the dot leaders of a table of contents: at least 60% of the words
        # must hold letters.
        if sum(any(ch.isalpha() for ch in w) for w in passage) >= 0.6 * words:
            out.append((" ".join(passage), f, p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--words", type=int, default=18)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--overlap", type=int, default=40)
    args = ap.parse_args()
    files = discover([Path(p) for p in args.paths]).files
    rng = random.Random(7)
    passages = sample_passages(files, args.queries, args.words, rng)
    print(f"{len(files)} files, {len(passages)} passages of {args.words} words, top-{args.k}")
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as home:
            settings = load_settings({"RAGLINE_HOME": home})
            settings.embedding.chunking = ChunkingSettings(
                chunk_tokens=size, overlap_tokens=min(args.overlap, size // 2 - 1)
            )
            svc = Services(settings)
            t0 = time.perf_counter()
            counts = ingest_pdf_paths(svc.pipeline, [str(f) for f in files])
            t_ingest = time.perf_counter() - t0
            vectors = svc.embedder.embed([text for text, _, _ in passages])
            print(f"chunk_tokens={size:4d}: {counts.chunks_written:6d} chunks, ingest {t_ingest:6.1f} s")
            for mode in ("vector", "hybrid"):
                search_settings = SearchSettings(mode=mode)
                hits = 0
                misses: list[str] = []
                t0 = time.perf_counter()
                for (text, f, p), vec in zip(passages, vectors, strict=True):
                    res = search.search(svc.conn, vec, args.k, text=text, settings=search_settings)
                    if any(Path(h.uri) == f.resolve() and h.page == p for h in res):
                        hits += 1
                    elif len(misses) < 3:
                        misses.append(f"{f.name} p{p}: {text[:80]}")
                ms = (time.perf_counter() - t0) * 1000 / len(passages)
                print(f"    {mode:6s}: hit@{args.k} = {hits / len(passages):.3f}  ({ms:.1f} ms/query in the store)")
                for m in misses:
                    print("      miss:", m)
            svc.close()
            from vectorstore.embedded import stop_embedded

            stop_embedded(Path(home))
            time.sleep(1)


if __name__ == "__main__":
    main()
