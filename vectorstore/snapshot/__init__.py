"""Disaster-recovery snapshots of the store: chunks with their vectors, the documents ledger, sources with their
cursors and model generations, exported from one consistent view into portable Parquet files and a manifest.

A snapshot describes one instant of the database (one REPEATABLE READ transaction), keeps vectors as they are
(readable by any Parquet reader), and counts only once its manifest is written: the manifest, written last,
carries the size, sha256 and row count of every file, so ``verify_snapshot`` finds damage without a database.
A restore loads everything in one transaction into an empty database, or nothing.

Modules: ``format`` (files, Arrow types, manifest), ``location`` (fsspec), ``create``, ``verify``, ``restore``,
``retention``, ``watch`` (the newest verified snapshot, for the age metric); ``catalog`` holds what create
and restore both read from the database.
"""

from vectorstore.snapshot.create import create_snapshot
from vectorstore.snapshot.format import (
    MANIFEST,
    TABLES,
    VERIFIED,
    Column,
    IndexSpec,
    Manifest,
    SnapshotError,
    from_arrow,
    to_arrow,
    vector_lists_from_binary,
)
from vectorstore.snapshot.location import child_url
from vectorstore.snapshot.restore import restore_snapshot
from vectorstore.snapshot.retention import (
    SnapshotEntry,
    delete_snapshots,
    expired,
    list_snapshots,
    parse_snapshot_name,
    snapshot_name,
)
from vectorstore.snapshot.verify import mark_verified, model_mismatch, verify_snapshot
from vectorstore.snapshot.watch import NewestSnapshot, SnapshotWatch, newest_verified

__all__ = [
    "MANIFEST",
    "TABLES",
    "VERIFIED",
    "Column",
    "IndexSpec",
    "Manifest",
    "NewestSnapshot",
    "SnapshotEntry",
    "SnapshotError",
    "SnapshotWatch",
    "child_url",
    "create_snapshot",
    "delete_snapshots",
    "expired",
    "from_arrow",
    "list_snapshots",
    "mark_verified",
    "model_mismatch",
    "newest_verified",
    "parse_snapshot_name",
    "restore_snapshot",
    "snapshot_name",
    "to_arrow",
    "vector_lists_from_binary",
    "verify_snapshot",
]
