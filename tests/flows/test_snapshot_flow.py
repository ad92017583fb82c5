"""The ``snapshot-store`` flow on the session's real Prefect server: snapshot, verify, retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from flows.pdfs import ingest_pdf_paths
from flows.prefect_private import cron_interval
from flows.runtime import Services, use_services
from flows.settings import SnapshotScheduleSettings
from tests.support.pdfgen import text_pdf
from vectorstore.snapshot import MANIFEST, VERIFIED, parse_snapshot_name, verify_snapshot


@pytest.fixture
def installed(services: Services, tmp_path: Path) -> Iterator[Services]:
    text_pdf(tmp_path / "docs" / "a.pdf", ["Glaciers carve U-shaped valleys.", "Moraines mark old ice."], title="Ice")
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    use_services(services)
    yield services
    use_services(None)


def test_flow_snapshots_verifies_and_prunes(prefect_api: str, installed: Services, tmp_path: Path) -> None:
    from flows.snapshot import snapshot_store

    root = tmp_path / "snapshots"
    for name in ("20200101T000000Z", "20200102T000000Z"):
        (root / name).mkdir(parents=True)
        (root / name / MANIFEST).write_text("{}")
    (root / "20200103T000000Z").mkdir()  # an attempt that never finished
    (root / "notes").mkdir()  # not ragline's: left alone

    result = snapshot_store(str(root), keep_last=2)

    new = Path(result["snapshot"])
    assert new.parent == root and parse_snapshot_name(new.name) is not None
    assert verify_snapshot(str(new)).rows("documents") == 1
    assert result["rows"]["chunks"] >= 2
    assert result["deleted"] == ["20200101T000000Z", "20200103T000000Z"]
    assert sorted(p.name for p in root.iterdir()) == ["20200102T000000Z", new.name, "notes"]


def test_bad_retention_fails_before_any_export(prefect_api: str, installed: Services, tmp_path: Path) -> None:
    from flows.snapshot import snapshot_store

    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        snapshot_store(str(tmp_path / "snapshots"), keep_last=0)
    assert not (tmp_path / "snapshots").exists()


def test_the_snapshot_metrics_follow_the_destination(prefect_api: str, installed: Services, tmp_path: Path) -> None:
    """As ``ragline serve`` watches snapshots.destination: nothing before the first snapshot, the flow's
    verified snapshot at once after it (wherever it ran), and the same after a restart (a new watch)."""
    from flows.snapshot import snapshot_store, watch_snapshots

    root = tmp_path / "snapshots"
    config = SnapshotScheduleSettings(destination=str(root), cron="0 2 * * 1-5")
    assert watch_snapshots(None) is None
    watch_snapshots(config)
    assert metric("ragline_snapshot_schedule_seconds") == 3 * 86400  # Friday 02:00 to Monday 02:00
    assert (metric("ragline_snapshot_last_success_timestamp_seconds"), metric("ragline_snapshot_size_bytes")) == (
        0.0,
        0.0,
    )

    new = Path(snapshot_store(str(root), keep_last=2)["snapshot"])

    assert (new / VERIFIED).exists()
    manifest = verify_snapshot(str(new))
    created = datetime.fromisoformat(manifest.created_at).timestamp()
    size = sum(t.bytes for t in manifest.tables.values())
    seen = (metric("ragline_snapshot_last_success_timestamp_seconds"), metric("ragline_snapshot_size_bytes"))
    assert seen == (created, size)
    watch_snapshots(config)  # a restarted service
    assert (metric("ragline_snapshot_last_success_timestamp_seconds"), metric("ragline_snapshot_size_bytes")) == seen


@pytest.mark.parametrize(
    ("cron", "hours"),
    [
        ("*/15 * * * *", 0.25),
        ("0 3 * * *", 24),
        ("@daily", 24),
        ("0 2 * * 1-5", 72),  # the weekend is the longest wait
        ("0 0 1 * *", 31 * 24),
        ("0 3 * 1-6 *", 185 * 24),  # June 30 03:00 to January 1 03:00
    ],
)
def test_schedule_interval_is_the_longest_gap_between_runs(cron: str, hours: float) -> None:
    assert cron_interval(cron) == hours * 3600


def metric(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)
