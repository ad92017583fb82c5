"""Text of a PDF read into memory, page by page: pdfium (pypdfium2) by default, pypdf as the fallback, the
better reading of a page kept where one looks damaged (the text repairs and the quality score live in
``connectors/pdf_text.py``). Every failure mode of real-world PDFs becomes a ``DocumentError`` with a stable
reason. Runs in parser processes (``flows/sandbox.py``).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from connectors import pdf_text
from connectors.base import DocumentError, Page, ParsedDocument
from connectors.pdf_settings import PdfSettings
from connectors.text import clean_text

if TYPE_CHECKING:
    from pypdf import PdfReader  # imported where it reads (the fallback): most files never need it

log = logging.getLogger(__name__)

PDF_MAGIC = b"%PDF-"


def _check_envelope(data: bytes, settings: PdfSettings) -> None:
    size = len(data)
    if size > settings.max_file_bytes:
        raise DocumentError("too_large", f"{size} bytes exceeds pdf.max_file_bytes={settings.max_file_bytes}")
    if size == 0:
        raise DocumentError("empty", "the file is empty (0 bytes)", retryable=True)
    if PDF_MAGIC not in data[:1024]:
        raise DocumentError("not_a_pdf", f"no {PDF_MAGIC.decode()} header in the first 1024 bytes")
    # Writers pad some files with NULs, whitespace or junk after the final %%EOF.
    if b"%%EOF" not in data[-65536:]:
        raise DocumentError("truncated", "no %%EOF marker in the last 64 KiB: the file is incomplete or cut short")


def parse_pdf(path: Path, settings: PdfSettings) -> ParsedDocument:
    """Read ``path`` and extract the text of each page (``parse_pdf_bytes``)."""
    try:
        size = path.stat().st_size
        if size > settings.max_file_bytes:
            raise DocumentError("too_large", f"{size} bytes exceeds pdf.max_file_bytes={settings.max_file_bytes}")
        data = path.read_bytes()
    except OSError as err:
        raise DocumentError("unreadable", f"cannot read the file: {err.strerror}", retryable=True) from err
    return parse_pdf_bytes(data, path.stem, settings)


def parse_pdf_bytes(data: bytes, name: str, settings: PdfSettings) -> ParsedDocument:
    """Extract the text of each page of a PDF read into memory; ``name`` is the title when the PDF has none.
    Raises ``DocumentError`` for anything that is not a usable PDF.

    pdfium reads by default; a file it cannot open at all is read by pypdf. With ``extractor: auto`` a page
    whose pdfium text looks damaged (``pdf_text.score``) is read again (``_repair``) and the best reading
    kept."""
    _check_envelope(data, settings)
    if settings.extractor == "pypdf":
        reader: _Reader = _PypdfReader.open(data, settings)
    else:
        try:
            reader = _PdfiumReader.open(data, settings)
        except DocumentError as err:
            if settings.extractor == "pdfium" or err.reason != "corrupt":
                raise
            log.info("pdfium cannot open %s (%s): reading it with pypdf", name, err.message)
            reader = _PypdfReader.open(data, settings)
    with reader:
        page_count, texts = _extract(reader, settings)
        title = _title(reader.title(), name)
        known = pdf_text.compounds(texts)
        texts = [pdf_text.join_hyphens(text, known) for text in texts]
        if settings.extractor == "auto" and isinstance(reader, _PdfiumReader):
            texts = _repair(reader, data, settings, texts, known)
    pages = [Page(number, text) for number, raw in enumerate(texts, start=1) if (text := pdf_text.finish(raw))]
    if not any(ch.isalnum() for p in pages for ch in p.text):
        raise DocumentError(
            "no_text",
            f"no extractable text in {page_count} page(s): image-only or scanned without a text layer (no OCR)",
        )
    return ParsedDocument(title=title, pages=pages, metadata={"page_count": page_count})


def _extract(reader: _Reader, settings: PdfSettings) -> tuple[int, list[str]]:
    """The page count and each page's prepared text (``pdf_text.prepare``), within the limits. The character
    limit counts text before line-end hyphens are joined (a little more than the result), page by page, so a
    decompression bomb stops early."""
    page_count = reader.page_count()
    if page_count > settings.max_pages:
        raise DocumentError("too_large", f"{page_count} pages exceeds pdf.max_pages={settings.max_pages}")
    texts: list[str] = []
    total = 0
    for index in range(page_count):
        try:
            text = pdf_text.prepare(reader.page_text(index))
        except Exception as err:  # untrusted input: the extractors raise many types on malformed pages
            raise DocumentError(
                "corrupt", f"page {index + 1}: text extraction failed ({type(err).__name__}: {err})"
            ) from err
        total += len(text)
        if total > settings.max_chars:
            raise DocumentError(
                "too_large", f"extracted text exceeds pdf.max_chars={settings.max_chars} at page {index + 1}"
            )
        texts.append(text)
    return page_count, texts


def _repair(reader: _PdfiumReader, data: bytes, settings: PdfSettings, texts: list[str], known: set[str]) -> list[str]:
    """Pages whose pdfium text looks suspect, read again by pdfium with word spaces taken from the glyph
    positions; pages whose best reading still looks damaged, by pypdf too. The best-scoring reading is kept,
    pdfium's own on a tie. A pypdf failure leaves the pdfium readings, which are valid ones."""
    vocabulary = pdf_text.Vocabulary.of(texts)
    repaired = list(texts)
    damaged: dict[int, list[str]] = {}
    for index, text in enumerate(texts):
        if not pdf_text.score(text, vocabulary).suspect:
            continue
        readings = [text]
        try:
            readings.append(pdf_text.join_hyphens(pdf_text.prepare(reader.page_text_spaced(index)), known))
        except Exception as err:  # noqa: BLE001 - untrusted input; pdfium's plain reading stands
            log.debug("pdfium cannot re-read page %d: %s: %s", index + 1, type(err).__name__, err)
        repaired[index] = pdf_text.best(readings, vocabulary)
        if pdf_text.score(repaired[index], vocabulary).damaged:
            damaged[index] = readings
    if not damaged:
        return repaired
    try:
        fallback = _PypdfReader.open(data, settings)
    except DocumentError as err:
        log.debug("pypdf cannot open the file to re-read damaged pages: %s", err.message)
        return repaired
    with fallback:
        for index, readings in damaged.items():
            try:
                raw = fallback.page_text(index)
            except Exception as err:  # noqa: BLE001 - untrusted input; pdfium's readings stand
                log.debug("pypdf cannot read page %d: %s: %s", index + 1, type(err).__name__, err)
                continue
            other = pdf_text.join_hyphens(pdf_text.prepare(raw), known)
            repaired[index] = pdf_text.best([*readings, other], vocabulary)
    return repaired


def _title(meta_title: str | None, name: str) -> str:
    if meta_title:
        cleaned = clean_text(meta_title)
        if cleaned and any(ch.isalnum() for ch in cleaned):
            return cleaned[:500]
    return name


def _passwords(settings: PdfSettings) -> list[str]:
    """The configured passwords, then the empty user password (files restricted only by an owner password)."""
    return [p.get_secret_value() for p in settings.passwords] + [""]


def _encrypted(settings: PdfSettings) -> DocumentError:
    detail = "none of the configured pdf.passwords opens it" if settings.passwords else "no password configured"
    return DocumentError("encrypted", f"encrypted PDF: {detail}")


class _Reader(Protocol):
    """An open PDF as the extraction loop needs it."""

    def page_count(self) -> int: ...

    def page_text(self, index: int) -> str: ...

    def title(self) -> str | None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


_PDFIUM_LOCK = threading.RLock()
"""pdfium is not thread-safe: one thread at a time inside it, whichever document it works on."""


class _PdfiumReader:
    """pdfium through pypdfium2: ~13x less CPU per page than pypdf, and it joins line-end hyphens itself."""

    def __init__(self, document: pdfium.PdfDocument) -> None:
        self._document = document

    @classmethod
    def open(cls, data: bytes, settings: PdfSettings) -> _PdfiumReader:
        with _PDFIUM_LOCK:
            for password in _passwords(settings):
                try:
                    return cls(pdfium.PdfDocument(data, password=password))
                except pdfium.PdfiumError as err:
                    if err.err_code != pdfium_c.FPDF_ERR_PASSWORD:
                        raise DocumentError("corrupt", f"pdfium: {err}") from err
        raise _encrypted(settings)

    def page_count(self) -> int:
        with _PDFIUM_LOCK:
            return len(self._document)

    def page_text(self, index: int) -> str:
        return self._read(index, lambda textpage: str(textpage.get_text_range()))

    def page_text_spaced(self, index: int) -> str:
        """The page's text with a space wherever the gap between two glyphs of a line exceeds ``WORD_GAP``
        of their height, as poppler decides. pdfium's own spacing runs words together on some justified text
        (groff: "enjoythe", "overathousand"); its line breaks and hyphen joins are kept. ~5 ms a page in
        Python: only for pages that look suspect."""
        return self._read(index, _spaced_text)

    def _read(self, index: int, read: Callable[[pdfium.PdfTextPage], str]) -> str:
        with _PDFIUM_LOCK:
            page = self._document[index]
            try:
                textpage = page.get_textpage()
                try:
                    return read(textpage)
                finally:
                    textpage.close()
            finally:
                page.close()

    def title(self) -> str | None:
        with _PDFIUM_LOCK:
            try:
                value = self._document.get_metadata_value("Title")
            except pdfium.PdfiumError:
                return None
        return value if isinstance(value, str) else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        with _PDFIUM_LOCK:
            self._document.close()


WORD_GAP = 0.13
"""A gap between glyphs (advance boxes) wider than this share of the box height (~1.15x the font size) is a
word space. Word spaces are ~0.25 em and stretch in justified lines; kerning within a word stays under
~0.1 em."""


def _spaced_text(textpage: pdfium.PdfTextPage) -> str:
    get_unicode, get_box = pdfium_c.FPDFText_GetUnicode, pdfium_c.FPDFText_GetLooseCharBox
    box = pdfium_c.FS_RECTF()
    out: list[str] = []
    prev_right: float | None = None
    prev_bottom = 0.0
    for i in range(pdfium_c.FPDFText_CountChars(textpage)):
        char = chr(get_unicode(textpage, i))
        # Python counts U+001C-1F as whitespace: they are ligature glyphs here (``pdf_text.LIGATURES``).
        if char in "\r\n\t" or (char >= " " and char.isspace()):
            # pdfium's own spaces and line breaks are kept; the next glyph starts afresh.
            if char == "\n" or (char != "\r" and out and out[-1] not in " \n"):
                out.append("\n" if char == "\n" else " ")
            prev_right = None
            continue
        if char in "\x02\ufffe":  # a line-end hyphen pdfium joined (its text API writes U+FFFE for it)
            out.append("\ufffe")
            prev_right = None
            continue
        get_box(textpage, i, box)
        height = box.top - box.bottom
        if (
            prev_right is not None
            and abs(box.bottom - prev_bottom) < height / 2
            and box.left - prev_right > WORD_GAP * height
            and out[-1] not in " \n"
        ):
            out.append(" ")
        out.append(char)
        prev_right, prev_bottom = box.right, box.bottom
    return "".join(out)


class _PypdfReader:
    """pypdf: slower, and reads some files pdfium rejects."""

    def __init__(self, reader: PdfReader) -> None:
        self._reader = reader

    @classmethod
    def open(cls, data: bytes, settings: PdfSettings) -> _PypdfReader:
        from pypdf import PasswordType, PdfReader
        from pypdf.errors import DependencyError, FileNotDecryptedError

        # pypdf logs every recoverable oddity of a file as a warning; failures that matter raise instead.
        logging.getLogger("pypdf").setLevel(logging.ERROR)
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not any(
                reader.decrypt(p) != PasswordType.NOT_DECRYPTED for p in _passwords(settings)
            ):
                raise _encrypted(settings)
            reader.pages  # noqa: B018 - reads the page tree now, so a broken one is "corrupt" here
        except DocumentError:
            raise
        except FileNotDecryptedError as err:
            raise DocumentError("encrypted", f"cannot decrypt: {err}") from err
        except DependencyError as err:
            raise DocumentError("encrypted", f"decryption needs a missing dependency: {err}") from err
        except Exception as err:  # untrusted input: anything pypdf raises means this file cannot be read
            raise DocumentError("corrupt", f"{type(err).__name__}: {err}") from err
        return cls(reader)

    def page_count(self) -> int:
        try:
            return len(self._reader.pages)
        except Exception as err:  # untrusted input: a page tree that breaks while counting
            raise DocumentError("corrupt", f"{type(err).__name__}: {err}") from err

    def page_text(self, index: int) -> str:
        return self._reader.pages[index].extract_text() or ""

    def title(self) -> str | None:
        try:
            meta_title = self._reader.metadata.title if self._reader.metadata else None
        except Exception:  # noqa: BLE001 - broken metadata dictionaries are common; the file name is a fine title
            return None
        return meta_title if isinstance(meta_title, str) else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
