"""Snapshot names, listing and retention: which snapshots expire, and settings that would delete them all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vectorstore.snapshot import MANIFEST, SnapshotEntry, expired, list_snapshots, parse_snapshot_name, snapshot_name

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


def entries(*ages_days: float, incomplete: tuple[float, ...] = ()) -> list[SnapshotEntry]:
    made = [SnapshotEntry(snapshot_name(NOW - timedelta(days=a)), NOW - timedelta(days=a), True) for a in ages_days]
    made += [SnapshotEntry(snapshot_name(NOW - timedelta(days=a)), NOW - timedelta(days=a), False) for a in incomplete]
    return made


def ages(names: list[str]) -> list[float]:
    return [(NOW - t).total_seconds() / 86400 for t in (parse_snapshot_name(n) for n in names) if t is not None]


@pytest.mark.parametrize(
    ("snapshots", "keep_last", "older_than_days", "deleted_ages"),
    [
        (entries(0, 1, 2, 3, 4), None, None, []),
        (entries(0, 1, 2, 3, 4), 2, None, [4, 3, 2]),
        (entries(0, 1, 2, 3, 4), 10, None, []),
        (entries(0, 1, 2, 3, 4), None, 2.5, [4, 3]),
        (entries(0, 1, 2, 3, 4), 4, 0.5, [4]),  # both: beyond the newest 4 and older than half a day
        (entries(30, 40, 50), 2, 7, [50]),  # the newest 2 stay however old
        (entries(30, 40, 50), None, 7, [50, 40, 30]),
        (entries(1, 2, incomplete=(0.5, 1.5, 3)), 5, None, [3, 1.5]),  # the newest incomplete may be in progress
        (entries(incomplete=(1, 2)), 1, None, []),  # nothing complete yet: keep the attempts for inspection
    ],
)
def test_retention(
    snapshots: list[SnapshotEntry], keep_last: int | None, older_than_days: float | None, deleted_ages: list[float]
) -> None:
    older_than = timedelta(days=older_than_days) if older_than_days is not None else None
    doomed = expired(snapshots, now=NOW, keep_last=keep_last, older_than=older_than)
    assert ages(doomed) == deleted_ages


def test_retention_refuses_settings_that_would_delete_everything() -> None:
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        expired(entries(1), now=NOW, keep_last=0)
    with pytest.raises(ValueError, match="older_than must be a positive"):
        expired(entries(1), now=NOW, older_than=timedelta(0))


def test_snapshot_names_are_utc_timestamps(tmp_path: Path) -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert snapshot_name(at) == "20250102T030405Z"
    assert parse_snapshot_name("20250102T030405Z") == at
    assert parse_snapshot_name("latest") is None and parse_snapshot_name("20251399T000000Z") is None
    (tmp_path / "20250102T030405Z").mkdir()
    (tmp_path / "20250102T030405Z" / MANIFEST).write_text("{}")
    (tmp_path / "20250103T000000Z").mkdir()
    (tmp_path / "notes").mkdir()
    assert sorted(list_snapshots(str(tmp_path)), key=lambda e: e.name) == [
        SnapshotEntry("20250102T030405Z", at, True),
        SnapshotEntry("20250103T000000Z", datetime(2025, 1, 3, tzinfo=UTC), False),
    ]
