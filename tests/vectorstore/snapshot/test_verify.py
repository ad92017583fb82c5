"""Damage found by verify (and by restore, before it writes a row); which configured model may serve a snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from embedding.model import ModelIdentity
from tests.vectorstore.snapshot.support import Origin, damaged, edit_manifest, flip_bytes, rows, truncate
from vectorstore.db import Connection
from vectorstore.snapshot import (
    MANIFEST,
    IndexSpec,
    Manifest,
    SnapshotError,
    model_mismatch,
    restore_snapshot,
    verify_snapshot,
)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: flip_bytes(p / "chunks.parquet"), r"snap/chunks\.parquet is corrupted: its sha256 differs"),
        (lambda p: truncate(p / "documents.parquet"), r"snap/documents\.parquet is truncated: \d+ bytes, the manifest"),
        (lambda p: (p / "sources.parquet").unlink(), r"snap/sources\.parquet is missing"),
        (lambda p: (p / MANIFEST).unlink(), r"snap/manifest\.json is missing: .* not a snapshot, or an incomplete"),
        (lambda p: truncate(p / MANIFEST), r"snap/manifest\.json is not valid JSON"),
        (
            lambda p: edit_manifest(p, lambda m: m.update(format_version=99)),
            r"snapshot format version 99 is not supported",
        ),
        (
            lambda p: edit_manifest(p, lambda m: m["tables"]["chunks"].update(rows=m["tables"]["chunks"]["rows"] + 1)),
            r"snap/chunks\.parquet: row count mismatch: the file holds \d+ rows, the manifest says \d+",
        ),
        (
            lambda p: edit_manifest(p, lambda m: m.update(vector_dim=768)),
            r"snap/chunks\.parquet: vector dimension mismatch",
        ),
    ],
    ids=["flipped-bytes", "truncated", "missing-file", "no-manifest", "bad-manifest", "format", "count", "dim"],
)
def test_damage_is_found_by_verify_and_by_restore(
    origin: Origin, target: Connection, tmp_path: Path, damage: Any, message: str
) -> None:
    snap = damaged(origin, tmp_path)
    damage(snap)
    with pytest.raises(SnapshotError, match=message):
        verify_snapshot(str(snap))
    with pytest.raises(SnapshotError, match=message):
        restore_snapshot(target, str(snap))
    assert rows(target, "SELECT to_regclass('chunks') IS NULL AS untouched")[0]["untouched"]


MINI = {"id": 1, "name": "acme/mini", "revision": "r1", "dim": 384, "normalized": True}
SMALL = {"id": 2, "name": "acme/small", "revision": "r2", "dim": 64, "normalized": True}


def identity(model: dict[str, Any]) -> ModelIdentity:
    return ModelIdentity(name=model["name"], revision=model["revision"], dim=model["dim"], normalized=True)


def manifest_of(*models: dict[str, Any]) -> Manifest:
    return Manifest("", 4, None, models, {}, {}, "", "", "", (IndexSpec(1, "vector", 16, 64),))


@pytest.mark.parametrize(
    ("models", "configured", "refused"),
    [
        ([{**MINI, "state": "active", "chunks": 5}], MINI, False),
        ([{**MINI, "state": "active", "chunks": 5}], SMALL, True),
        ([{**MINI, "state": "active", "chunks": 0}], SMALL, True),  # an empty serving generation still serves
        ([{**MINI, "state": "active", "chunks": 5}, {**SMALL, "state": "building", "chunks": 2}], SMALL, False),
        ([{**MINI, "state": "retired", "chunks": 3}, {**SMALL, "state": "active", "chunks": 5}], MINI, True),
        ([{**MINI, "state": "retired", "chunks": 3}], SMALL, False),  # nothing serves
        ([{**MINI, "chunks": 5}], MINI, False),  # before generations: the model of the chunks
        ([{**MINI, "chunks": 5}], SMALL, True),
        ([{**MINI, "chunks": 0}], SMALL, False),
        ([], SMALL, False),
    ],
    ids=[
        "active",
        "other",
        "empty-active",
        "building-goes-on",
        "retired-leftovers",
        "none-serving",
        "v3-match",
        "v3-other",
        "v3-empty",
        "no-models",
    ],
)
def test_model_mismatch_compares_with_the_serving_generation(
    models: list[dict[str, Any]], configured: dict[str, Any], refused: bool
) -> None:
    why = model_mismatch(manifest_of(*models), identity(configured))
    assert (why is not None) == refused, why
