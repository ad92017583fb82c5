"""The newest verified snapshot under a root, as the snapshot-age metric reads it.

Why read the destination rather than set a gauge where a snapshot is taken: the process that takes a snapshot
(a Prefect worker, a CLI run, ``ragline serve`` itself) is often not the one that is scraped, and a gauge set in
memory reads "never" after every restart. The destination is the truth an operator cares about, whoever
wrote it; one listing and two small reads per scrape, cached briefly (``SnapshotWatch``), cost nothing beside
a snapshot.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from vectorstore.snapshot.format import VERIFIED, SnapshotError
from vectorstore.snapshot.location import open_location
from vectorstore.snapshot.retention import list_snapshots
from vectorstore.snapshot.verify import read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewestSnapshot:
    name: str
    created_at: float
    """Unix time its manifest was written."""
    bytes: int
    """Its table files' bytes, as the manifest lists them."""


def newest_verified(root: str) -> NewestSnapshot | None:
    """The newest snapshot under ``root`` with a readable manifest and the flow's verification mark; None if
    there is none. A root that holds no marked snapshot at all (written before marks existed) counts its
    newest readable one, so an upgrade does not read as "no snapshot ever"."""
    fs, path = open_location(root)
    complete = sorted((e for e in list_snapshots(root) if e.complete), key=lambda e: e.taken_at, reverse=True)
    unmarked: NewestSnapshot | None = None
    any_marked = False
    for entry in complete:
        marked = bool(fs.exists(posixpath.join(path, entry.name, VERIFIED)))
        any_marked = any_marked or marked
        if not marked and (unmarked is not None or any_marked):
            continue
        try:
            manifest = read_manifest(posixpath.join(root.rstrip("/"), entry.name))
            created = datetime.fromisoformat(manifest.created_at).timestamp()
        except (SnapshotError, ValueError) as err:
            log.debug("snapshot %s under %s not counted: %s", entry.name, root, err)
            continue
        found = NewestSnapshot(entry.name, created, sum(t.bytes for t in manifest.tables.values()))
        if marked:
            return found
        unmarked = found
    return None if any_marked else unmarked


class SnapshotWatch:
    """``newest_verified(root)`` cached for ``ttl`` seconds, for readings at scrape time. A destination that
    cannot be read keeps the last figures (logged once per outage): the age then grows until the alert, which is
    right, since the next snapshot will not land there either."""

    def __init__(self, root: str, *, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._newest: NewestSnapshot | None = None
        self._read_at: float | None = None
        self._failing = False

    def newest(self) -> NewestSnapshot | None:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.ttl:
                self._read_at = now
                try:
                    self._newest = newest_verified(self.root)
                    self._failing = False
                except (SnapshotError, OSError) as err:
                    if not self._failing:
                        log.warning("cannot read snapshots under %s for the age metric: %s", self.root, err)
                    self._failing = True
            return self._newest

    def invalidate(self) -> None:
        """Read again at the next reading (a snapshot just landed)."""
        with self._lock:
            self._read_at = None

    def created_at(self) -> float:
        newest = self.newest()
        return newest.created_at if newest else 0.0

    def size(self) -> float:
        newest = self.newest()
        return float(newest.bytes) if newest else 0.0
