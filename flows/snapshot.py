"""The ``snapshot-store`` flow: a consistent snapshot of the store under a root directory or object-store URL,
verified where it landed, then old snapshots pruned. Deployments run it on a schedule; a snapshot that fails
or does not verify stops the flow before retention deletes anything.

A verified snapshot gets its mark (``verified.json``), which the snapshot metrics read from the destination
(``watch_snapshots``): the age is right in a ``ragline serve`` that did not take the snapshot, and after a
restart."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.prefect_private import cron_interval
from flows.runtime import services
from flows.settings import SnapshotScheduleSettings
from telemetry.metrics import SNAPSHOT_LAST_SUCCESS, SNAPSHOT_SCHEDULE, SNAPSHOT_SIZE, expose
from vectorstore import snapshot

_watch: snapshot.SnapshotWatch | None = None
_watching = threading.Lock()


@task(name="create-snapshot", cache_policy=NO_CACHE)
def create_snapshot(dest: str) -> dict[str, Any]:
    """Export chunks, vectors, ledger, cursors and model identities from one consistent view."""
    return snapshot.create_snapshot(services().conn, dest).as_json()


@task(name="verify-snapshot", cache_policy=NO_CACHE)
def verify_snapshot(src: str) -> dict[str, int]:
    """Read back what was stored (sizes, sha256, row counts, vector dimension): a snapshot counts only once
    it verifies at its destination."""
    manifest = snapshot.verify_snapshot(src)
    snapshot.mark_verified(src, manifest)
    return {table: manifest.rows(table) for table in snapshot.TABLES}


@task(name="apply-snapshot-retention", cache_policy=NO_CACHE)
def apply_retention(root: str, keep_last: int | None, older_than_days: float | None) -> list[str]:
    """Delete snapshots beyond the retention policy (the newest ``keep_last`` are always kept)."""
    doomed = snapshot.expired(
        snapshot.list_snapshots(root), now=datetime.now(UTC), keep_last=keep_last, older_than=_days(older_than_days)
    )
    snapshot.delete_snapshots(root, doomed)
    if doomed:
        get_run_logger().info("deleted %d old snapshot(s): %s", len(doomed), ", ".join(doomed))
    return doomed


@flow(name="snapshot-store", flow_run_name="snapshot-store", log_prints=True)
def snapshot_store(dest_root: str, keep_last: int | None = 7, older_than_days: float | None = None) -> dict[str, Any]:
    """Snapshot the store into ``dest_root``/<UTC timestamp>, verify it, then apply retention."""
    # Bad retention settings fail here, before minutes of export.
    snapshot.expired([], now=datetime.now(UTC), keep_last=keep_last, older_than=_days(older_than_days))
    name = snapshot.snapshot_name(datetime.now(UTC))
    dest = snapshot.child_url(dest_root, name)
    manifest = create_snapshot(dest)
    rows = verify_snapshot(dest)
    deleted = apply_retention(dest_root, keep_last, older_than_days)
    snapshot_landed(dest_root)
    sizes = {t["file"]: t["bytes"] for t in manifest["tables"].values()}
    create_markdown_artifact(
        key="snapshot-store",
        markdown="\n".join(
            [
                f"Snapshot `{dest}` (schema version {manifest['schema_version']}, {_dims(manifest)}-dim)",
                "",
                "| table | rows | bytes |",
                "|---|---|---|",
                *(f"| {t} | {rows[t]} | {sizes[f'{t}.parquet']} |" for t in snapshot.TABLES),
                "",
                f"Deleted by retention: {', '.join(deleted) or 'none'}",
            ]
        ),
        description="Rows and sizes of the snapshot",
    )
    return {"snapshot": dest, "rows": rows, "deleted": deleted}


def watch_snapshots(settings: SnapshotScheduleSettings | None) -> snapshot.SnapshotWatch | None:
    """Export the snapshot metrics of the configured destination, read when scraped: the newest verified
    snapshot's time and size, and the schedule's longest interval. For ``ragline serve`` at start; nothing is
    exported when snapshots are not configured."""
    if settings is None:
        return None
    SNAPSHOT_SCHEDULE.set(cron_interval(settings.cron))
    expose(SNAPSHOT_SCHEDULE)
    return _watch_root(settings.destination)


def snapshot_landed(root: str) -> None:
    """A snapshot under ``root`` just verified: the watch of that root reads it at once. A process that
    watches nothing (a worker, the CLI) starts watching ``root``, so what it pushes carries the snapshot."""
    with _watching:
        watch = _watch
    if watch is None:
        _watch_root(root)
    elif watch.root.rstrip("/") == root.rstrip("/"):
        watch.invalidate()


def _watch_root(root: str) -> snapshot.SnapshotWatch:
    global _watch
    with _watching:
        _watch = watch = snapshot.SnapshotWatch(root)
        SNAPSHOT_LAST_SUCCESS.set_function(watch.created_at)
        SNAPSHOT_SIZE.set_function(watch.size)
        expose(SNAPSHOT_LAST_SUCCESS, SNAPSHOT_SIZE)
    return watch


def _dims(manifest: dict[str, Any]) -> str:
    """``384``, or ``64/384`` while two generations of different dimensions hold vectors."""
    return "/".join(str(d) for d in sorted({m["dim"] for m in manifest["models"] if m.get("chunks")})) or "no"


def _days(days: float | None) -> timedelta | None:
    return timedelta(days=days) if days is not None else None
