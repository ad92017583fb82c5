"""Hostile PDF files, written as raw bytes (hand-built objects and a correct xref table, so parsers get past
the envelope to the hostile part), and the special files that only look like PDFs. Used by the containment
test (``tests/flows/test_hostile_corpus.py``) and by ``bench/hostile.py``.

Each generator attacks one thing and stays small in memory: the zlib bomb is compressed in chunks and
written as it goes; nothing here ever holds an inflated bomb.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tests.support.pdfgen import text_pdf

_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
_MEDIA_BOX = b"/MediaBox [0 0 200 200]"


class _Writer:
    """Objects written one by one to a file, each offset noted for the xref table that ends the file."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.offsets: dict[int, int] = {}
        self.fh.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")

    def obj(self, number: int, *parts: bytes) -> None:
        self.offsets[number] = self.fh.tell()
        self.fh.write(b"%d 0 obj\n" % number)
        for part in parts:
            self.fh.write(part)
        self.fh.write(b"\nendobj\n")

    def stream(self, number: int, chunks: Iterable[bytes], extra: bytes = b"") -> None:
        """A stream whose data arrives in chunks; its /Length is an indirect object written after it."""
        length_number = number + 1
        self.offsets[number] = self.fh.tell()
        self.fh.write(b"%d 0 obj\n<< /Length %d 0 R %s >>\nstream\n" % (number, length_number, extra))
        start = self.fh.tell()
        for chunk in chunks:
            self.fh.write(chunk)
        length = self.fh.tell() - start
        self.fh.write(b"\nendstream\nendobj\n")
        self.obj(length_number, b"%d" % length)

    def page(self, number: int, parent: int, font: int, contents: int) -> None:
        self.obj(
            number,
            b"<< /Type /Page /Parent %d 0 R %s /Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
            % (parent, _MEDIA_BOX, font, contents),
        )

    def text_page(self, number: int, parent: int, text: bytes) -> None:
        """A page at ``number`` that shows ``text``; its font and content stream take the next numbers."""
        self.page(number, parent, number + 1, number + 2)
        self.obj(number + 1, _FONT)
        self.stream(number + 2, [b"BT /F1 12 Tf 10 100 Td (%s) Tj ET" % text])

    def finish(self, root: int, trailer: Callable[[int], bytes] = lambda _xref: b"") -> None:
        """The xref table (one subsection, 0..highest object) and the trailer; ``trailer`` adds entries to
        the trailer given the xref table's offset."""
        size = max(self.offsets) + 1
        xref = self.fh.tell()
        self.fh.write(b"xref\n0 %d\n0000000000 65535 f \n" % size)
        for number in range(1, size):
            offset = self.offsets.get(number)
            self.fh.write(b"%010d 00000 n \n" % offset if offset is not None else b"0000000000 65535 f \n")
        self.fh.write(
            b"trailer\n<< /Size %d /Root %d 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (size, root, trailer(xref), xref)
        )


def _single_page(
    path: Path, contents: Callable[[_Writer], None], trailer: Callable[[int], bytes] = lambda _xref: b""
) -> Path:
    """Catalog 1, page tree 2, page 3, font 4, content stream 5 (written by ``contents``)."""
    with path.open("wb") as fh:
        w = _Writer(fh)
        w.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        w.obj(2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
        w.page(3, 2, 4, 5)
        w.obj(4, _FONT)
        contents(w)
        w.finish(1, trailer)
    return path


def parse_time_bomb(path: Path, pages: int = 400, words: int = 24_000, fillers: int = 30) -> Path:
    """Many pages that share one small compressed content stream (the file stays ~80 KB): ``words``
    one-letter words, each shown by its own operator and followed by ``fillers`` no-op operators (``0 Tc``),
    under pypdf's budget of 2M tokens per stream. Every page costs a full layout of the stream in pdfium
    and, where its text (all one-letter words) looks damaged, a reading by pypdf (~6 s a page here).

    The default keeps the text of all pages (19.2M characters) under ``pdf.max_chars``, so the character
    limit cannot stop it early: ~750k operators a page, ~0.13 s of pdfium a page here. ``issue_bomb`` is the
    shape the issue names: ~1M text operators a page, 2M characters, ~3 s of pdfium a page here."""
    body = b"BT /F1 1 Tf 0 0 Td " + (b"(a ) Tj" + b" 0 Tc" * fillers + b"\n") * words + b"ET"
    with path.open("wb") as fh:
        w = _Writer(fh)
        first_page = 6
        kids = b" ".join(b"%d 0 R" % (first_page + i) for i in range(pages))
        w.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        w.obj(2, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages))
        w.obj(3, _FONT)
        w.stream(4, [zlib.compress(body, 9)], b"/Filter /FlateDecode")
        for i in range(pages):
            w.page(first_page + i, 2, 3, 4)
        w.finish(1)
    return path


def issue_bomb(path: Path) -> Path:
    """``parse_time_bomb`` as the issue describes it: one operator per word, just under pypdf's token budget."""
    return parse_time_bomb(path, words=990_000, fillers=0)


def zlib_bomb(path: Path, inflated_bytes: int = 4 * 1024**3) -> Path:
    """One page whose FlateDecode content stream inflates to ``inflated_bytes`` of zeros (PDF whitespace)
    from ~1/1000 of that on disk: a parser that inflates a stream whole needs gigabytes."""
    return _single_page(path, lambda w: w.stream(5, deflated_zeros(inflated_bytes), b"/Filter /FlateDecode"))


def deflated_zeros(size: int, block: int = 1 << 20) -> Iterator[bytes]:
    """A zlib stream of ``size`` zero bytes (a multiple of ``block``), made in milliseconds: each block is
    compressed after a full flush, so every block's output is the same bytes and is compressed once; the
    Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    if size % block:
        raise ValueError(f"size must be a multiple of {block}")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert first == again, "a full flush leaves no history: equal blocks compress to equal bytes"
    yield b"\x78\xda"  # zlib header: deflate, 32 KiB window, best compression
    for _ in range(size // block):
        yield first
    yield compressor.flush()  # the final (empty) block
    yield (((size % 65521) << 16) | 1).to_bytes(4, "big")


def cyclic_page_tree(path: Path) -> Path:
    """A page tree whose first kid lists the root among its own /Kids, before the one real page: a walker
    without a visited set (or a depth limit) recurses or loops forever on the way to page 1."""
    with path.open("wb") as fh:
        w = _Writer(fh)
        w.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        w.obj(2, b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 1 >>")
        w.obj(3, b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>")
        w.text_page(4, 2, b"Cyclic page tree")
        w.finish(1)
    return path


def nested_arrays(path: Path, depth: int = 200_000) -> Path:
    """The page tree's /Kids nested ``depth`` arrays deep: a recursive-descent object parser runs out of
    stack (C) or recursion depth (Python) before it reaches a page."""
    with path.open("wb") as fh:
        w = _Writer(fh)
        w.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        w.obj(2, b"<< /Type /Pages /Count 1 /Kids ", b"[" * depth, b"3 0 R", b"]" * depth, b" >>")
        w.text_page(3, 2, b"Nested arrays")
        w.finish(1)
    return path


def xref_prev_loop(path: Path) -> Path:
    """A trailer whose /Prev is the offset of its own xref table: a reader that follows /Prev without
    remembering where it has been never stops."""
    return _single_page(
        path,
        lambda w: w.stream(5, [b"BT /F1 12 Tf 10 100 Td (Xref prev loop) Tj ET"]),
        lambda xref: b"/Prev %d" % xref,
    )


def many_pages(path: Path, pages: int = 30_000, per_node: int = 1000) -> Path:
    """A valid file of ``pages`` tiny pages (two-level page tree, one shared content stream): over
    ``pdf.max_pages`` it is refused before any page is read."""
    with path.open("wb") as fh:
        w = _Writer(fh)
        nodes = (pages + per_node - 1) // per_node
        first_node, first_page = 6, 6 + nodes
        w.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        node_refs = b" ".join(b"%d 0 R" % (first_node + n) for n in range(nodes))
        w.obj(2, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (node_refs, pages))
        w.obj(3, _FONT)
        w.stream(4, [b"BT /F1 12 Tf 10 100 Td (Tiny page) Tj ET"])
        for n in range(nodes):
            count = min(per_node, pages - n * per_node)
            kids = b" ".join(b"%d 0 R" % (first_page + n * per_node + i) for i in range(count))
            w.obj(first_node + n, b"<< /Type /Pages /Parent 2 0 R /Kids [%s] /Count %d >>" % (kids, count))
        for p in range(pages):
            w.page(first_page + p, first_node + p // per_node, 3, 4)
        w.finish(1)
    return path


SQL_NAME = "x'); DROP TABLE documents;--.pdf"
"""A file name that breaks any SQL built by string formatting."""

GOOD_PAGES = {
    "lighthouse": ["Lighthouses guide ships past the reef at night with a rotating beam."],
    "tides": ["Spring tides follow the new and the full moon; neap tides have the smallest range."],
    "nested": ["Cormorants dry their wings on the breakwater after diving for fish."],
    "sql": ["Saltmarsh samphire is harvested by hand at low water in early summer."],
}
"""The good files' text: each holds words no other file has, so a search finds exactly its own file."""

HOSTILE: dict[str, Callable[[Path], Path]] = {
    "parse-time-bomb.pdf": parse_time_bomb,
    "zlib-bomb.pdf": zlib_bomb,
    "cyclic-page-tree.pdf": cyclic_page_tree,
    "nested-arrays.pdf": nested_arrays,
    "xref-prev-loop.pdf": xref_prev_loop,
    "many-pages.pdf": many_pages,
}
"""The hostile files by name, each with its generator."""


def write_corpus(root: Path, bomb: Callable[[Path], Path] = parse_time_bomb) -> dict[str, Path]:
    """The whole corpus under ``root``: the good files (one inside a folder named ``x.pdf``, one named with
    SQL), the hostile files (``bomb`` writes the parse-time bomb) and two files named .pdf that are no regular
    files (a FIFO, whose read blocks, and a link to /dev/zero, whose read never ends): discovery must skip
    those unopened. Returns every path by its short name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "x.pdf").mkdir()
    paths = {
        "lighthouse": text_pdf(root / "lighthouse.pdf", GOOD_PAGES["lighthouse"], title="Lighthouses"),
        "tides": text_pdf(root / "tides.pdf", GOOD_PAGES["tides"], title="Tides"),
        "nested": text_pdf(root / "x.pdf" / "inside.pdf", GOOD_PAGES["nested"], title="Cormorants"),
        "sql": text_pdf(root / SQL_NAME, GOOD_PAGES["sql"], title="Samphire"),
    }
    for name, generate in {**HOSTILE, "parse-time-bomb.pdf": bomb}.items():
        paths[name] = generate(root / name)
    os.mkfifo(root / "fifo.pdf")
    (root / "dev-zero.pdf").symlink_to("/dev/zero")
    paths["fifo.pdf"], paths["dev-zero.pdf"] = root / "fifo.pdf", root / "dev-zero.pdf"
    return paths
