"""PDF files on a file system: discovery, content hashing and text extraction per page with pdfium (pypdf as
the fallback; the text repairs and the quality check live in ``connectors/pdf_text.py``).

Every failure mode of real-world PDFs becomes a ``DocumentError`` with a stable reason, so one bad file is
quarantined and the rest of the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Self

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors import pdf_text
from connectors.base import Content, DocumentError, DocumentGone, Page, ParsedDocument, SourceDocument, failing_document
from connectors.text import clean_text

if TYPE_CHECKING:
    from pypdf import PdfReader  # imported where used: listing and planning never need it (~90 ms)

log = logging.getLogger(__name__)

PDF_MAGIC = b"%PDF-"
_HASH_BLOCK = 1 << 20
RACY_SECONDS = 2.0
"""A file modified this recently gets no stat key: a write within the file system's timestamp granularity
could leave its stat unchanged (git's "racy" entries), so it is read again next time."""


Extractor = Literal["auto", "pdfium", "pypdf"]


class PdfSettings(BaseModel):
    """How PDFs are found and parsed. Limits exist so one absurd file cannot exhaust the machine."""

    model_config = ConfigDict(extra="forbid")

    passwords: list[SecretStr] = Field(
        default_factory=list, description="Passwords tried, in order, on encrypted PDFs (never logged)."
    )
    max_file_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Larger files are quarantined unread.")
    max_pages: int = Field(default=10_000, gt=0, description="PDFs with more pages are quarantined.")
    max_chars: int = Field(
        default=20_000_000,
        gt=0,
        description="Extracted text above this (a decompression bomb) is quarantined.",
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".pdf"], description="File suffixes picked up when walking directories."
    )
    extractor: Extractor = Field(
        default="auto",
        description="Who reads the text. auto: pdfium; a page whose text looks damaged is read again "
        "(pdfium with word spaces from glyph positions, pypdf where glyphs were lost) and the best-scoring "
        "reading kept; a file pdfium cannot open is read by pypdf. pdfium or pypdf: that one only. "
        "Changing it re-processes every document.",
    )
    rehash: bool = Field(
        default=False,
        description="Read and hash every file at every run. Default: a file whose size, mtime, ctime and inode "
        "match what the ledger recorded is known unchanged without reading it.",
    )

    def fingerprint(self) -> str:
        """Changes when a setting that can turn a quarantined file into a good one changes."""
        digest = hashlib.sha256()
        for password in self.passwords:
            digest.update(hashlib.sha256(password.get_secret_value().encode()).digest())
        digest.update(f"{self.max_file_bytes}:{self.max_pages}:{self.max_chars}".encode())
        return digest.hexdigest()[:16]


@dataclass
class Discovery:
    """What a walk found: PDF files, the directories walked completely, and the directories that could not be
    read (documents under those must not be treated as deleted).

    Files are named by their path inside the walked directory, not by their symlink target: a document
    reached through a link that is later removed is then known to be gone. Two names of one file are
    ingested once (the first in walk order)."""

    files: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)


def discover(paths: Iterable[Path], extensions: Iterable[str] = (".pdf",)) -> Discovery:
    """Find PDF files under ``paths``; safe against symlink loops and duplicate links to one file."""
    suffixes = tuple(ext.lower() for ext in extensions)
    found = Discovery()
    seen_files: set[Path] = set()

    def add(file: Path) -> None:
        real = file.resolve()
        if real not in seen_files:
            seen_files.add(real)
            found.files.append(file)

    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {raw}")
        if path.is_file():
            add(path)
            continue
        if not path.is_dir():
            raise NotAFileError(f"{raw} is {_special(path)}: PDFs are read from regular files and directories only")
        root = path.resolve()
        found.roots.append(root)
        visited: set[tuple[int, int]] = set()

        def on_error(err: OSError) -> None:
            log.warning("cannot read directory %s: %s", err.filename, err.strerror)
            found.unreadable.append(Path(str(err.filename)))

        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
            try:
                st = os.stat(dirpath)
            except OSError as err:
                on_error(err)
                dirnames.clear()
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:  # a symlink loop or a second link to a directory already walked
                dirnames.clear()
                continue
            visited.add(key)
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(suffixes):
                    candidate = Path(dirpath, name)
                    if candidate.is_file():
                        add(candidate)
                    elif not candidate.is_dir():  # never opened: reading a FIFO blocks, a device never ends
                        log.warning("skipped %s: it is %s, not a file", candidate, _special(candidate))
    return found


class NotAFileError(ValueError):
    """A path given to ingest that is neither a regular file nor a directory (a FIFO, device or socket)."""


def _special(path: Path) -> str:
    """What a path that is not a regular file or directory is, in words (it is never opened to find out)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a broken link"
    for test, what in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what + (" (through a link)" if path.is_symlink() else "")
    return "not a regular file"


def file_hash(path: Path, max_bytes: int) -> str:
    """sha256 of the file's bytes; files over the size limit get an identity from size and mtime instead,
    so they are quarantined without reading gigabytes."""
    st = path.stat()
    if st.st_size > max_bytes:
        return f"oversize:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


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


def stat_key(st: os.stat_result, *, racy_before: float | None = None) -> str | None:
    """Size, mtime, ctime and inode: any write changes one of them. None for a file changed after
    ``racy_before`` (seconds since the epoch), whose stat a write in the same timestamp tick could repeat."""
    if racy_before is not None and max(st.st_mtime, st.st_ctime) >= racy_before:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _raise(error: DocumentError) -> ParsedDocument:
    raise error


def _failing(name: str, content_hash: str, error: DocumentError) -> SourceDocument:
    return failing_document(name, name, content_hash, error)


class PdfConnector:
    """PDF files and directories as a source; the external id of a document is its real path."""

    kind = "pdf"

    def __init__(self, paths: Iterable[Path], settings: PdfSettings | None = None) -> None:
        self.settings = settings or PdfSettings()
        self.discovery = discover(paths, self.settings.extensions)

    def document(self, path: Path) -> SourceDocument:
        """The document at ``path``, from its stat alone: it is read (hashed and parsed from the same bytes)
        only if the pipeline needs it. A file that cannot be named still becomes a document, whose load
        raises: it is quarantined instead of failing the run."""
        name = str(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise
        except OSError as err:
            return _failing(
                name,
                f"unreadable:{err.errno}",
                DocumentError("unreadable", f"cannot stat the file: {err.strerror}", retryable=True),
            )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Postgres text and JSON need UTF-8: record it under an escaped name and ask for a rename.
            safe = os.fsencode(path).decode("utf-8", "backslashreplace")
            return _failing(
                safe,
                f"badname:{st.st_size}:{st.st_mtime_ns}",
                DocumentError("bad_filename", "the file name is not valid UTF-8: rename the file"),
            )
        return SourceDocument(
            external_id=name,
            uri=name,
            content_hash=f"unread:{stat_key(st)}",
            load=partial(parse_pdf, path, self.settings),
            title=path.stem,
            modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            metadata={"size": st.st_size},
            stat_key=stat_key(st, racy_before=time.time() - RACY_SECONDS),
            read=partial(self.read, path),
        )

    def read(self, path: Path) -> Content:
        """Read the file once: its content hash and a parse of the bytes read. A file over the size limit is
        not read (its identity is its size and mtime); one that cannot be read gets a load that fails."""
        try:
            st = path.stat()
            if st.st_size > self.settings.max_file_bytes:
                return Content(file_hash(path, self.settings.max_file_bytes), partial(parse_pdf, path, self.settings))
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise DocumentGone(str(path)) from err
        except OSError as err:
            error = DocumentError("unreadable", f"cannot read the file: {err.strerror}", retryable=True)
            return Content(f"unreadable:{err.errno}", partial(_raise, error))
        load = partial(parse_pdf_bytes, data, path.stem, self.settings)
        key = stat_key(st, racy_before=time.time() - RACY_SECONDS)
        return Content(hashlib.sha256(data).hexdigest(), load, len(data), key)

    def iter_documents(self) -> Iterator[SourceDocument]:
        for path in self.discovery.files:
            try:
                yield self.document(path)
            except FileNotFoundError:
                log.warning("%s disappeared during the run", path)

    def covers(self, external_id: str) -> bool:
        """True when ``external_id`` lies under a directory walked completely in this run: if it was not
        found, it is gone from the source (a link to it removed counts as gone)."""
        path = Path(external_id)
        if any(path.is_relative_to(bad) for bad in self.discovery.unreadable):
            return False
        return any(path.is_relative_to(root) for root in self.discovery.roots)
