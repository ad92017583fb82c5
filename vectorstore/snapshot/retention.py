"""Snapshots under one root, named by their UTC time: listing them, choosing which have expired, deleting."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vectorstore.snapshot.format import MANIFEST
from vectorstore.snapshot.location import open_location

_NAME_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME_RE = re.compile(r"^\d{8}T\d{6}Z$")


def snapshot_name(at: datetime) -> str:
    """Directory name of a snapshot taken at ``at``: its UTC time, so names sort by age."""
    return at.astimezone(UTC).strftime(_NAME_FORMAT)


def parse_snapshot_name(name: str) -> datetime | None:
    if not _NAME_RE.match(name):
        return None
    try:
        return datetime.strptime(name, _NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class SnapshotEntry:
    name: str
    taken_at: datetime
    complete: bool
    """A manifest was written: an entry without one is a snapshot that failed or is still being written."""


def expired(
    entries: Sequence[SnapshotEntry],
    *,
    now: datetime,
    keep_last: int | None = None,
    older_than: timedelta | None = None,
) -> list[str]:
    """Names to delete, oldest first.

    ``keep_last`` is a floor: the newest N complete snapshots are kept however old, so a snapshot job that
    fails for weeks never ages out the last good copies. ``older_than`` deletes complete snapshots past that
    age (beyond the floor); with only ``keep_last``, every complete snapshot beyond the newest N goes. An
    incomplete entry is deleted once a newer complete snapshot exists (a newer one may still be in progress).
    With neither setting nothing is deleted.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError("keep_last must be at least 1 (0 would delete every snapshot)")
    if older_than is not None and older_than <= timedelta(0):
        raise ValueError("older_than must be a positive duration")
    if keep_last is None and older_than is None:
        return []
    complete = sorted((e for e in entries if e.complete), key=lambda e: e.taken_at, reverse=True)
    floor = complete[:keep_last] if keep_last is not None else []
    kept = {e.name for e in floor}
    doomed: list[SnapshotEntry] = []
    for entry in complete:
        if entry.name in kept:
            continue
        if older_than is None or now - entry.taken_at > older_than:
            doomed.append(entry)
    if complete:
        newest = complete[0].taken_at
        doomed += [e for e in entries if not e.complete and e.taken_at < newest]
    return [e.name for e in sorted(doomed, key=lambda e: e.taken_at)]


def list_snapshots(root: str) -> list[SnapshotEntry]:
    """Entries named by a UTC timestamp under ``root``; other names are not ragline's and are left alone."""
    fs, path = open_location(root)
    if not fs.exists(path):
        return []
    entries = []
    for child in fs.ls(path, detail=False):
        name = posixpath.basename(str(child).rstrip("/"))
        taken_at = parse_snapshot_name(name)
        if taken_at is not None:
            entries.append(SnapshotEntry(name, taken_at, bool(fs.exists(posixpath.join(path, name, MANIFEST)))))
    return entries


def delete_snapshots(root: str, names: Sequence[str]) -> None:
    fs, path = open_location(root)
    for name in names:
        if parse_snapshot_name(name) is None:
            raise ValueError(f"{name!r} is not a snapshot name")
        fs.rm(posixpath.join(path, name), recursive=True)
