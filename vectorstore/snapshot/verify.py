"""Check a snapshot without a database: its manifest, then every file against it; and whether a model can
serve the store it holds."""

from __future__ import annotations

import json
import posixpath
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vectorstore.db import first_line
from vectorstore.generations import ModelIdentity
from vectorstore.snapshot.format import MANIFEST, TABLES, VERIFIED, Column, Manifest, SnapshotError
from vectorstore.snapshot.location import file_sha256, open_location


def read_manifest(src: str) -> Manifest:
    fs, root = open_location(src)
    path = posixpath.join(root, MANIFEST)
    where = f"{src.rstrip('/')}/{MANIFEST}"
    if not fs.exists(path):
        raise SnapshotError(f"{where} is missing: {src} is not a snapshot, or an incomplete one")
    try:
        data = json.loads(fs.cat_file(path))
    except (ValueError, UnicodeDecodeError) as err:
        raise SnapshotError(f"{where} is not valid JSON (corrupted or truncated): {err}") from err
    return Manifest.parse(data, where)


def _check_vector_field(manifest: Manifest, column: Column, field: pa.DataType, where: str) -> None:
    """The stored vector column agrees with the manifest: fixed-size lists of ``vector_dim`` made by models of
    that dimension, or variable-length float32 lists where no single dimension is stated."""
    if column.dim is None:
        if manifest.vector_dim is not None or not pa.types.is_list(field) or field.value_type != pa.float32():
            raise SnapshotError(
                f"{where}: vector dimension mismatch: column {column.name} holds {field}, the manifest says "
                f"{manifest.vector_dim if manifest.vector_dim is not None else 'variable-length float lists'}"
            )
        return
    size = getattr(field, "list_size", None)
    if column.dim != manifest.vector_dim or size != manifest.vector_dim:
        raise SnapshotError(
            f"{where}: vector dimension mismatch: column {column.name} holds {size or field}, "
            f"the manifest says {manifest.vector_dim}"
        )
    others = [d for d in manifest.dims if d != column.dim]
    if others:
        raise SnapshotError(
            f"{where}: vector dimension mismatch: column {column.name} holds {column.dim}-dim vectors, but the "
            f"manifest's models with chunks make {', '.join(map(str, others))}-dim ones"
        )


def verify_snapshot(src: str) -> Manifest:
    """Check a snapshot end to end without a database: manifest format, then for every file its presence,
    size, sha256, row count (from Parquet metadata) and, for chunks, the vector dimensions."""
    manifest = read_manifest(src)
    fs, root = open_location(src)
    for table in TABLES:
        entry = manifest.tables[table]
        path = posixpath.join(root, entry.file)
        where = f"{src.rstrip('/')}/{entry.file}"
        if not fs.exists(path):
            raise SnapshotError(f"{where} is missing")
        size = int(fs.size(path))
        if size < entry.bytes:
            raise SnapshotError(f"{where} is truncated: {size} bytes, the manifest says {entry.bytes}")
        if size > entry.bytes:
            raise SnapshotError(f"{where} is corrupted: {size} bytes, the manifest says {entry.bytes}")
        if file_sha256(fs, path) != entry.sha256:
            raise SnapshotError(f"{where} is corrupted: its sha256 differs from the manifest's")
        try:
            with fs.open(path, "rb") as fh:
                parquet = pq.ParquetFile(fh)
                rows = parquet.metadata.num_rows
                schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as err:
            raise SnapshotError(f"{where} is not a readable Parquet file: {first_line(err)}") from err
        if rows != entry.rows:
            raise SnapshotError(
                f"{where}: row count mismatch: the file holds {rows} rows, the manifest says {entry.rows}"
            )
        for column in entry.columns:
            if column.name not in schema.names:
                raise SnapshotError(f"{where} has no column {column.name}")
            if column.type == "vector":
                _check_vector_field(manifest, column, schema.field(column.name).type, where)
    known = {int(m["id"]) for m in manifest.models}
    for spec in manifest.indexes:
        if spec.model_id not in known:
            raise SnapshotError(
                f"{src.rstrip('/')}/{MANIFEST} lists an index of model {spec.model_id}, which its models do not include"
            )
    return manifest


def mark_verified(src: str, manifest: Manifest, *, now: datetime | None = None) -> None:
    """Record beside the manifest that ``src`` verified (``verify_snapshot`` itself only reads: it also checks
    snapshots an operator may not write to). Names the manifest it vouches for by its creation time."""
    fs, root = open_location(src)
    at = (now or datetime.now(UTC)).isoformat()
    body = json.dumps({"verified_at": at, "manifest_created_at": manifest.created_at}, sort_keys=True).encode()
    fs.pipe_file(posixpath.join(root, VERIFIED), body)


def _identity_matches(model: ModelIdentity, row: dict[str, Any]) -> bool:
    return (model.name, model.revision, model.dim, model.normalized) == (
        row["name"],
        row["revision"],
        row["dim"],
        row["normalized"],
    )


def _label(row: dict[str, Any]) -> str:
    return f"{row['name']} ({row['revision']}, dim {row['dim']})"


def model_mismatch(manifest: Manifest, model: ModelIdentity) -> str | None:
    """Why ``model`` cannot be the configured model of the restored store, or None.

    It must be the model whose generation serves search (before schema v4: the model of the chunks), or the
    model of the generation being built: then the re-embed goes on after the restore, as it would have in the
    old database, while queries are still embedded by the serving model. A model with only leftover chunks of
    a retired generation does not count. A store where nothing serves accepts any model.
    """
    serving = manifest.serving
    building = [m for m in manifest.models if m.get("state") == "building"]
    if not serving or any(_identity_matches(model, m) for m in [*serving, *building]):
        return None
    also = f" (being built: {_label(building[0])})" if building else ""
    return (
        f"the snapshot's search is served by {'; '.join(_label(m) for m in serving)}{also}, but the configured "
        f"model is {model.name} ({model.revision}, dim {model.dim})"
    )
