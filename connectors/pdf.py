"""PDF files on a file system as a source: discovery (special files never opened), stat keys, and each file
read once when it needs work (hashed and parsed from the same bytes; parsing in ``connectors/pdf_parse.py``).

A file that cannot be read or named becomes a document whose load fails with a ``DocumentError``, so it is
quarantined and the rest of the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from connectors.base import Content, DocumentError, DocumentGone, ParsedDocument, SourceDocument, failing_document
from connectors.pdf_parse import parse_pdf, parse_pdf_bytes
from connectors.pdf_settings import PdfSettings

log = logging.getLogger(__name__)

_HASH_BLOCK = 1 << 20
RACY_SECONDS = 2.0
"""A file modified this recently gets no stat key: a write within the file system's timestamp granularity
could leave its stat unchanged (git's "racy" entries), so it is read again next time."""


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
