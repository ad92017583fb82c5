"""What ``ragline serve`` keeps on disk under ``RAGLINE_HOME/inbox``: posted PDFs, once per content, and the
journal of admitted requests, so that nothing accepted is lost.

A request is journaled when it is admitted and leaves the journal when its run is settled; requests still in
the journal at start (queued when the process stopped, or running when it died) are queued again: the ledger
makes running one twice cost nothing. A posted file goes once no request needs it: at once when its run
committed it (or found it unchanged), after ``serve.inbox_retention`` when the run failed or quarantined it
(``ragline quarantine retry`` reads it again meanwhile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from flows.trigger import TriggerRequest, safe_filename

log = logging.getLogger(__name__)

_SETTLED = ".settled"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Inbox:
    """Posted files under ``root/<sha[:2]>/<sha>/<name>.pdf`` and the journal under ``root/journal``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.journal = root / "journal"

    # -- posted files ----------------------------------------------------------------------------------------

    def folder(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def store(self, data: bytes, filename: str | None) -> tuple[str, Path]:
        """Store ``data`` once per content (the first name posted is kept, so titles read well); returns
        (sha256, path). Written to a temporary name and renamed: a reader never sees half a file."""
        digest = hashlib.sha256(data).hexdigest()
        folder = self.folder(digest)
        existing = sorted(folder.glob("*.pdf")) if folder.is_dir() else []
        if existing:
            return digest, existing[0]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / safe_filename(filename, digest[:16])
        _write_atomic(path, data)
        return digest, path

    def stored(self, digest: str) -> Path:
        found = sorted(self.folder(digest).glob("*.pdf"))
        if not found:
            raise FileNotFoundError(f"the posted file {digest} is gone from {self.root}")
        return found[0]

    # -- journal ---------------------------------------------------------------------------------------------

    def _entry(self, request: TriggerRequest) -> Path:
        return self.journal / f"{request.key}.json"

    def admit(self, request: TriggerRequest) -> bool:
        """Journal ``request``; False when an identical one already is (its run is the one that counts)."""
        self.journal.mkdir(parents=True, exist_ok=True)
        tmp = self.journal / f".{request.key}.{os.getpid()}.{threading.get_ident()}.part"
        tmp.write_text(json.dumps(request.as_json()))
        try:
            os.link(tmp, self._entry(request))  # atomic, and refuses to replace an existing entry
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def pending(self) -> list[TriggerRequest]:
        """Requests admitted and not settled, oldest first; an unreadable entry is set aside with a warning."""
        if not self.journal.is_dir():
            return []
        entries = []
        for path in self.journal.glob("*.json"):
            try:  # settled (removed) by another thread meanwhile: not pending
                entries.append((path.stat().st_mtime, path, path.read_text()))
            except FileNotFoundError:
                continue
        out = []
        for _, path, text in sorted(entries):
            try:
                out.append(TriggerRequest.from_json(json.loads(text)))
            except (ValueError, KeyError, TypeError) as err:
                log.warning("inbox journal: %s is unreadable (%s): moved aside", path.name, err)
                with contextlib.suppress(OSError):
                    path.replace(path.with_suffix(".bad"))
        return out

    def settle(self, request: TriggerRequest, *, keep: bool) -> None:
        """The request's run is over: out of the journal, and its posted file removed unless another pending
        request needs it (``keep``: kept ``serve.inbox_retention`` for a retry, then pruned)."""
        self._entry(request).unlink(missing_ok=True)
        folder = self._unneeded_folder(request)
        if folder is None:
            return
        if keep:
            (folder / _SETTLED).write_text(str(time.time()))
        else:
            shutil.rmtree(folder, ignore_errors=True)

    def drop(self, request: TriggerRequest, *, journaled: bool) -> None:
        """A request not admitted after all (refused, shed, or its identical run had finished): its journal
        entry forgotten (``journaled``: this call wrote it), its posted file too unless something else holds it
        (a pending request, a retention mark)."""
        if journaled:
            self._entry(request).unlink(missing_ok=True)
        folder = self._unneeded_folder(request)
        if folder is not None and not (folder / _SETTLED).exists():
            shutil.rmtree(folder, ignore_errors=True)

    def discard(self, digest: str) -> None:
        """A downloaded copy, once its run is over (the URL stays the document's address; a retry fetches it
        again), unless a pending request posted the same content."""
        if not any(p.kind == "pdf" and p.target == digest for p in self.pending()):
            shutil.rmtree(self.folder(digest), ignore_errors=True)

    def _unneeded_folder(self, request: TriggerRequest) -> Path | None:
        if request.kind != "pdf":
            return None
        folder = self.folder(request.target)
        if not folder.is_dir() or any(p.kind == "pdf" and p.target == request.target for p in self.pending()):
            return None
        return folder

    def prune(self, retention: float, now: float | None = None) -> int:
        """Remove posted files no pending request needs whose retention is over (since their run settled, or
        since they were stored when no run ever took them); returns how many went. Run while no request is
        being admitted (at start and at the stop)."""
        now = time.time() if now is None else now
        wanted = {p.target for p in self.pending() if p.kind == "pdf"}
        removed = 0
        for folder in self.root.glob("??/*"):
            if not folder.is_dir() or folder.name in wanted:
                continue
            marker = folder / _SETTLED
            try:
                since = float(marker.read_text() or 0) if marker.exists() else folder.stat().st_mtime
            except (OSError, ValueError):
                since = 0.0
            if now - since >= retention:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def files(self) -> list[Path]:
        """Every posted file still held (tests, and operators wondering what is kept)."""
        return sorted(self.root.glob("??/*/*.pdf"))
