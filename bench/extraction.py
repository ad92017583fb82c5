"""Word recall and CPU per page of PDF text extraction: pdfium, pypdf and auto (pdfium, pypdf on pages that look
damaged), and pypdf as ragline used it before (``extract_text`` + ``clean_text``: "today"), against a reader.

    apt-get install -y poppler-utils          # pdftotext, the reader's reading
    mkdir -p /tmp/debpdf && cd /tmp/debpdf && apt-get download gnuplot-doc cvs device-tree-compiler \\
        && for f in *.deb; do dpkg-deb -x $f x; done && find x -name '*.pdf.gz' -exec gunzip -kf {} \\;
    python bench/extraction.py examples/pdfs /tmp/debpdf/x

The reader's text is poppler's ``pdftotext -raw`` (content order, correct word spacing). Both sides get the
same normalisation: pdfTeX ligature codes mapped, NFKC, line-end hyphens joined (compounds the document
writes with a hyphen keep it). Per page, the words of 4+ letters (lowercased letter runs) are compared as
multisets: recall = the share of the reader's words found in ours. Identical files (by content) count once.
CPU is ``time.process_time`` around each extractor's parse of the whole file, the extractors taking turns
file by file in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connectors import pdf_text
from connectors.pdf_parse import parse_pdf_bytes
from connectors.pdf_settings import PdfSettings
from connectors.text import clean_text

_WORD = re.compile(r"[^\W\d_]{4,}")
EXTRACTORS = ("today", "pypdf", "pdfium", "auto")


def reader_pages(path: Path) -> list[str]:
    """pdftotext -raw, one string per page (it ends each page with a form feed)."""
    out = subprocess.run(
        ["pdftotext", "-raw", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True
    ).stdout.decode("utf-8", "replace")
    return out.split("\f")[:-1] if out.endswith("\f") else out.split("\f")


def normalised(pages: list[str]) -> list[str]:
    prepared = [pdf_text.prepare(p) for p in pages]
    known = pdf_text.compounds(prepared)
    return [pdf_text.finish(pdf_text.join_hyphens(p, known)) for p in prepared]


def words(text: str) -> Counter[str]:
    return Counter(w.lower() for w in _WORD.findall(text))


def today(data: bytes) -> dict[int, str]:
    """ragline's extraction before pdfium: pypdf's ``extract_text`` and ``clean_text``, nothing else."""
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=False)
    texts = [clean_text(page.extract_text() or "") for page in reader.pages]
    return {number: text for number, text in enumerate(texts, start=1) if text}


def parser(extractor: str) -> Callable[[bytes], dict[int, str]]:
    if extractor == "today":
        return today
    settings = PdfSettings.model_validate({"extractor": extractor})
    return lambda data: {p.number or 0: p.text for p in parse_pdf_bytes(data, "bench", settings).pages}


@dataclass
class Row:
    name: str
    pages: int
    reader_words: int = 0
    found: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    fallback_pages: int = 0

    def recall(self, extractor: str) -> float:
        return self.found[extractor] / self.reader_words if self.reader_words else 1.0


def measure(path: Path) -> Row:
    data = path.read_bytes()
    reference = normalised(reader_pages(path))
    row = Row(path.name, len(reference))
    reader_counts = [words(p) for p in reference]
    row.reader_words = sum(sum(c.values()) for c in reader_counts)
    outputs: dict[str, dict[int, str]] = {}
    for extractor in EXTRACTORS:
        parse = parser(extractor)
        t0 = time.process_time()
        outputs[extractor] = parse(data)
        row.cpu[extractor] = time.process_time() - t0
        ours = normalised([outputs[extractor].get(n, "") for n in range(1, len(reference) + 1)])
        row.found[extractor] = sum(
            sum((mine & theirs).values()) for mine, theirs in zip(map(words, ours), reader_counts, strict=True)
        )
    row.fallback_pages = sum(1 for n, t in outputs["auto"].items() if outputs["pdfium"].get(n) != t)
    return row


def pdf_files(paths: list[Path]) -> list[Path]:
    found: dict[str, Path] = {}
    for root in paths:
        for path in sorted([root] if root.is_file() else root.rglob("*.pdf")):
            found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    return list(found.values())


def main() -> None:
    parser_ = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser_.add_argument("paths", nargs="*", type=Path, default=[Path("examples/pdfs")])
    args = parser_.parse_args()
    if shutil.which("pdftotext") is None:
        sys.exit("pdftotext (poppler) is missing: apt-get install -y poppler-utils")
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    files = pdf_files(args.paths)
    if not files:
        sys.exit(f"no PDF files under {', '.join(map(str, args.paths))}")
    parser("auto")(files[0].read_bytes())  # imports and first-call costs out of the timings
    rows = [measure(path) for path in files]

    recall_heads = " | ".join(f"recall {e}" for e in EXTRACTORS)
    print(f"| file | pages | reader words | {recall_heads} | auto pages changed |")
    print("|---|---:|---:|" + "---:|" * len(EXTRACTORS) + "---:|")
    for row in [*rows, total(rows)]:
        recalls = " | ".join(f"{row.recall(e):.4f}" for e in EXTRACTORS)
        print(f"| {row.name} | {row.pages} | {row.reader_words} | {recalls} | {row.fallback_pages} |")
    print()
    print("| file | " + " | ".join(f"CPU ms/page {e}" for e in EXTRACTORS) + " | pdfium / today | auto / today |")
    print("|---|" + "---:|" * (len(EXTRACTORS) + 2))
    for row in [*rows, total(rows)]:
        ms = {e: 1000 * row.cpu[e] / row.pages for e in EXTRACTORS}
        cells = " | ".join(f"{ms[e]:.2f}" for e in EXTRACTORS)
        print(f"| {row.name} | {cells} | {ms['pdfium'] / ms['today']:.3f} | {ms['auto'] / ms['today']:.3f} |")


def total(rows: list[Row]) -> Row:
    out = Row("all", sum(r.pages for r in rows), sum(r.reader_words for r in rows))
    out.found = {e: sum(r.found[e] for r in rows) for e in EXTRACTORS}
    out.cpu = {e: sum(r.cpu[e] for r in rows) for e in EXTRACTORS}
    out.fallback_pages = sum(r.fallback_pages for r in rows)
    return out


if __name__ == "__main__":
    main()
