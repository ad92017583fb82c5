"""The newest verified snapshot under a root, as the age metric reads it: real snapshots of the origin store,
written beside failed, unreadable and unfinished ones."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest

from tests.vectorstore.snapshot.support import Origin
from vectorstore.snapshot import (
    MANIFEST,
    VERIFIED,
    Manifest,
    NewestSnapshot,
    SnapshotWatch,
    create_snapshot,
    mark_verified,
    newest_verified,
)


def take(origin: Origin, root: Path, name: str, *, verified: bool) -> Manifest:
    dest = str(root / name)
    manifest = create_snapshot(origin.services.conn, dest)
    if verified:
        mark_verified(dest, manifest)
    return manifest


def expected(name: str, manifest: Manifest) -> NewestSnapshot:
    created = datetime.fromisoformat(manifest.created_at).timestamp()
    return NewestSnapshot(name, created, sum(t.bytes for t in manifest.tables.values()))


def junk(root: Path, name: str, *, manifest: str | None = None, verified: bool = False) -> None:
    (root / name).mkdir(parents=True)
    if manifest is not None:
        (root / name / MANIFEST).write_text(manifest)
    if verified:
        (root / name / VERIFIED).write_text("{}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_newest_verified_snapshot_is_the_last_success(origin: Origin, tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    good = take(origin, root, "20260101T000000Z", verified=True)
    take(origin, root, "20260102T000000Z", verified=False)  # written, but its verification failed
    junk(root, "20260103T000000Z", manifest="{}", verified=True)  # a manifest that does not read
    junk(root, "20260104T000000Z")  # still being written
    junk(root, "notes", manifest="{}")  # not ragline's
    assert (root / "20260101T000000Z" / VERIFIED).exists()
    assert newest_verified(str(root)) == expected("20260101T000000Z", good)
    assert newest_verified(str(tmp_path / "nothing-yet")) is None


def test_a_root_from_before_verification_marks_counts_its_newest_readable_snapshot(
    origin: Origin, tmp_path: Path
) -> None:
    root = tmp_path / "snapshots"
    older = take(origin, root, "20250101T000000Z", verified=False)
    junk(root, "20250102T000000Z", manifest="{}")
    assert newest_verified(str(root)) == expected("20250101T000000Z", older)
    newer = take(origin, root, "20250103T000000Z", verified=False)
    assert newest_verified(str(root)) == expected("20250103T000000Z", newer)
    marked = take(origin, root, "20250104T000000Z", verified=True)
    take(origin, root, "20250105T000000Z", verified=False)  # once marks exist, an unmarked one is a failure
    assert newest_verified(str(root)) == expected("20250104T000000Z", marked)


def test_the_watch_reads_when_due_or_told_and_keeps_the_last_figures_through_an_outage(
    origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "snapshots"
    clock = Clock()
    watch = SnapshotWatch(str(root), ttl=30.0, clock=clock)
    assert (watch.created_at(), watch.size()) == (0.0, 0.0)
    first = take(origin, root, "20260101T000000Z", verified=True)
    assert watch.newest() is None  # cached for 30 s
    clock.now = 30.0
    assert watch.newest() == expected("20260101T000000Z", first)
    second = take(origin, root, "20260102T000000Z", verified=True)
    watch.invalidate()  # what the snapshot flow does when one lands
    assert watch.newest() == expected("20260102T000000Z", second)
    assert watch.created_at() == expected("20260102T000000Z", second).created_at
    assert watch.size() == sum(t.bytes for t in second.tables.values()) > 0
    # a fresh watch, as after a restart, reads the same from the destination
    assert SnapshotWatch(str(root)).newest() == watch.newest()

    caplog.set_level(logging.WARNING, logger="vectorstore.snapshot.watch")
    watch.root = "nosuchprotocol://bucket/snapshots"  # the destination cannot be read any more
    for _ in range(2):
        watch.invalidate()
        assert watch.newest() == expected("20260102T000000Z", second)
    assert [r.getMessage() for r in caplog.records if "cannot read snapshots" in r.getMessage()] == [
        f"cannot read snapshots under {watch.root} for the age metric: "
        f"{watch.root}: unusable snapshot location: Protocol not known: nosuchprotocol"
    ]
