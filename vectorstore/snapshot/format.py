"""The snapshot format: its files, the Arrow types Postgres columns are stored as (and rows converted to and
from them), and the manifest that describes every file.

Embeddings are the expensive part of the store to recreate, so a snapshot keeps them as they are, readable by
any Parquet reader: ``fixed_size_list<float32>[dim]`` when every chunk's model makes vectors of one dimension
(the common case), ``list<float32>`` when generations of different dimensions hold chunks (a re-embed into a
model of another dimension was in progress). The layout of a snapshot (a directory or an fsspec URL)::

    sources.parquet  models.parquet  documents.parquet  chunks.parquet  manifest.json

``manifest.json`` is written last: a directory without it is an incomplete snapshot. It records the format
version, the schema version, every model generation (dimension, state, chunk count), the HNSW index of each
generation that had one, and the row count, byte size and sha256 of every file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.types.json import Json, Jsonb

FORMAT = "ragline-snapshot"
FORMAT_VERSION = 2
"""2: model states, per-generation indexes, variable-length vectors when dimensions differ."""
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
"""Written beside the manifest once the snapshot flow has verified the snapshot where it landed: what the
snapshot-age metric counts (a snapshot whose verification failed keeps its manifest, but is no success)."""
TABLES = ("sources", "models", "documents", "chunks")
"""In load order: every table after the tables it references."""

HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}
"""pgvector's own defaults: what an index built without options has."""
INDEX_TYPES = {"vector_cosine_ops": "vector", "halfvec_cosine_ops": "halfvec"}
"""The operator classes of the generation indexes ragline builds, to the vector type of their graphs."""


class SnapshotError(RuntimeError):
    """A snapshot that cannot be written, verified or restored; the message names the file or table and why."""


# -- column types -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """Postgres type name (``pg_type.typname``): the type binary COPY writes on restore."""
    dim: int | None = None
    """Dimension of a ``vector`` column stored as fixed-size lists; None: variable-length lists."""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, **({"dim": self.dim} if self.dim is not None else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Column:
        dim = data.get("dim")
        return cls(name=str(data["name"]), type=str(data["type"]), dim=None if dim is None else int(dim))


_SCALAR_TYPES: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    # JSON is kept as its text (Postgres' canonical form), so it needs no Python round trip either way.
    "json": pa.string(),
    "jsonb": pa.string(),
}


def arrow_type(column: Column) -> pa.DataType:
    """The Arrow type a Postgres column is stored as; vectors are float32 lists, fixed-size where they can be."""
    if column.type == "vector":
        return pa.list_(pa.float32(), column.dim) if column.dim else pa.list_(pa.float32())
    if column.type == "uuid":
        return pa.uuid()
    if column.type in _SCALAR_TYPES:
        return _SCALAR_TYPES[column.type]
    raise SnapshotError(f"column {column.name} has type {column.type}, which snapshots cannot carry")


def arrow_schema(table: str, columns: Sequence[Column]) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, arrow_type(c)) for c in columns],
        metadata={"ragline.table": table, "ragline.format": f"{FORMAT}/{FORMAT_VERSION}"},
    )


def vectors_from_binary(values: Sequence[bytes | None], dim: int) -> tuple[np.ndarray, list[bool]]:
    """Binary ``vector`` values to a (rows, dim) float32 array, and which rows are null (zeros there)."""
    width = 4 + 4 * dim
    null = bytes(width)
    missing = [v is None for v in values]
    raw = b"".join(null if v is None else v for v in values)
    if len(raw) != width * len(values):
        raise SnapshotError(f"a vector value is not {dim}-dimensional")
    # The header is as wide as one float: drop it as a column.
    dense = np.frombuffer(raw, dtype=">f4").reshape(len(values), dim + 1)[:, 1:].astype(np.float32)
    return dense, missing


def vector_lists_from_binary(values: Sequence[bytes | None]) -> pa.ListArray:
    """Binary ``vector`` values of any dimensions to a ``list<float32>`` array (nulls kept), without a Python
    object per element: the headers (one float wide) are cut out of the joined buffer at once."""
    missing = [v is None for v in values]
    present = [v for v in values if v is not None]
    if any(len(v) < 4 or len(v) % 4 for v in present):
        raise SnapshotError("a vector value is not a whole number of float32s")
    widths = np.array([len(v) // 4 for v in present], dtype=np.int64)  # header + floats, in words
    words = np.frombuffer(b"".join(present), dtype=">f4")
    floats = np.delete(words, np.cumsum(widths) - widths).astype(np.float32)
    lengths = np.zeros(len(values), dtype=np.int64)
    lengths[np.flatnonzero(~np.array(missing, dtype=bool))] = widths - 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(floats, type=pa.float32()), mask=pa.array(missing) if any(missing) else None
    )


def to_arrow(columns: Sequence[Column], rows: Sequence[tuple[Any, ...]]) -> list[pa.Array]:
    """Rows as read with binary loaders (uuid.UUID, datetime, raw vectors, JSON text) to Arrow arrays."""
    arrays: list[pa.Array] = []
    for i, column in enumerate(columns):
        values = [row[i] for row in rows]
        if column.type == "vector" and column.dim is None:
            arrays.append(vector_lists_from_binary(values))
        elif column.type == "vector":
            assert column.dim is not None
            dense, missing = vectors_from_binary(values, column.dim)
            arrays.append(
                pa.FixedSizeListArray.from_arrays(
                    pa.array(dense.reshape(-1)), column.dim, mask=pa.array(missing) if any(missing) else None
                )
            )
        elif column.type == "uuid":
            storage = pa.array([None if v is None else v.bytes for v in values], type=pa.binary(16))
            arrays.append(pa.ExtensionArray.from_storage(pa.uuid(), storage))
        else:
            arrays.append(pa.array(values, type=arrow_type(column)))
    return arrays


def _as_is(text: Any) -> str:
    return str(text)


def _vector_rows(array: pa.Array, dim: int | None) -> list[Any]:
    """One numpy vector (or None) per row of a fixed-size or variable-length list array."""
    flat = array.flatten().to_numpy(zero_copy_only=False)  # flatten() skips null lists
    if dim is not None:
        vectors: list[Any] = list(flat.reshape(-1, dim))
    else:
        lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
        vectors = np.split(flat, np.cumsum(lengths)[:-1]) if len(array) else []
    if not array.null_count:
        return vectors
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    if dim is None:  # split() gave an empty vector in each null row
        return [v if ok else None for v, ok in zip(vectors, valid, strict=True)]
    rows: list[Any] = [None] * len(array)
    for j, k in enumerate(np.flatnonzero(valid)):
        rows[k] = vectors[j]
    return rows


def from_arrow(columns: Sequence[Column], batch: pa.RecordBatch) -> Iterator[tuple[Any, ...]]:
    """Rows of a record batch, as binary COPY dumps them (numpy vectors, JSON text passed through)."""
    lists: list[Sequence[Any]] = []
    for column in columns:
        array = batch.column(column.name)
        if column.type == "vector":
            lists.append(_vector_rows(array, column.dim))
        elif column.type in ("json", "jsonb"):
            wrap = Jsonb if column.type == "jsonb" else Json
            lists.append([None if v is None else wrap(v, dumps=_as_is) for v in array.to_pylist()])
        else:
            lists.append(array.to_pylist())
    return zip(*lists, strict=True)


def wrong_dimension(batch: pa.RecordBatch, dims: Mapping[int, int]) -> tuple[Any, int, int, int | None] | None:
    """The first chunk of ``batch`` whose vector does not have its model's dimension (``dims``: model id to
    dimension), as (chunk id, model id, length, the model's dimension or None for an unknown model)."""
    lengths = pc.fill_null(pc.list_value_length(batch.column("embedding")), -1).to_numpy(zero_copy_only=False)
    models = batch.column("model_id").to_numpy(zero_copy_only=False)
    known, inverse = np.unique(models, return_inverse=True)
    expected = np.array([dims.get(int(m), -2) for m in known], dtype=np.int64)[inverse]
    bad = np.flatnonzero((lengths != expected) & (lengths >= 0))  # a null vector is the NOT NULL's to refuse
    if not len(bad):
        return None
    i = int(bad[0])
    return batch.column("id")[i].as_py(), int(models[i]), int(lengths[i]), dims.get(int(models[i]))


# -- manifest -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableFile:
    table: str
    file: str
    rows: int
    bytes: int
    sha256: str
    columns: tuple[Column, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "columns": [c.as_json() for c in self.columns],
        }


@dataclass(frozen=True)
class IndexSpec:
    """The HNSW index of one model generation, as the parts ``migrations.index_ddl`` builds it from: a restore
    never runs SQL text read from a snapshot."""

    model_id: int
    type: str
    """``vector`` or ``halfvec``: the precision of the graph's vectors."""
    m: int
    ef_construction: int

    def as_json(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "type": self.type, "m": self.m, "ef_construction": self.ef_construction}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexSpec:
        spec = cls(
            model_id=int(data["model_id"]),
            type=str(data["type"]),
            m=int(data["m"]),
            ef_construction=int(data["ef_construction"]),
        )
        if spec.type not in INDEX_TYPES.values():
            raise ValueError(f"index type {spec.type!r} is not one of {', '.join(sorted(INDEX_TYPES.values()))}")
        return spec


@dataclass(frozen=True)
class Manifest:
    created_at: str
    schema_version: int
    vector_dim: int | None
    """Size of the fixed-size vector lists; None when chunks hold vectors of several dimensions."""
    models: tuple[dict[str, Any], ...]
    """Every model row: id, name, revision, dim, normalized, state (absent before schema v4), and how many
    chunks it produced."""
    tables: dict[str, TableFile]
    hnsw: dict[str, Any]
    """Options of the serving generation's index (of any index where it had none); {} without an index."""
    postgres_version: str
    pgvector_version: str
    ragline_version: str
    indexes: tuple[IndexSpec, ...] = ()
    """The valid HNSW index of each generation that had one (none listed before format 2)."""
    format_version: int = FORMAT_VERSION

    def rows(self, table: str) -> int:
        return self.tables[table].rows

    @property
    def dims(self) -> list[int]:
        """Dimensions of the vectors the snapshot holds (one per model generation with chunks)."""
        return sorted({int(m["dim"]) for m in self.models if m.get("chunks")})

    @property
    def serving(self) -> list[dict[str, Any]]:
        """The model(s) whose vectors answer searches: the active generation; before schema v4 (no states)
        the model that produced chunks."""
        if any("state" in m for m in self.models):
            return [m for m in self.models if m.get("state") == "active"]
        return [m for m in self.models if m.get("chunks")]

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "schema_version": self.schema_version,
            "vector_dim": self.vector_dim,
            "models": list(self.models),
            "hnsw": self.hnsw,
            "indexes": [i.as_json() for i in self.indexes],
            "postgres_version": self.postgres_version,
            "pgvector_version": self.pgvector_version,
            "ragline_version": self.ragline_version,
            "tables": {name: t.as_json() for name, t in self.tables.items()},
        }

    @classmethod
    def parse(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SnapshotError(f"{where}: not a ragline snapshot manifest (format is not {FORMAT!r})")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise SnapshotError(
                f"{where}: snapshot format version {version!r} is not supported "
                f"(this ragline reads {', '.join(map(str, READABLE_VERSIONS))})"
            )
        try:
            tables = {
                name: TableFile(
                    table=name,
                    file=str(t["file"]),
                    rows=int(t["rows"]),
                    bytes=int(t["bytes"]),
                    sha256=str(t["sha256"]),
                    columns=tuple(Column.from_json(c) for c in t["columns"]),
                )
                for name, t in data["tables"].items()
            }
            manifest = cls(
                created_at=str(data["created_at"]),
                schema_version=int(data["schema_version"]),
                vector_dim=None if data["vector_dim"] is None else int(data["vector_dim"]),
                models=tuple(dict(m) for m in data["models"]),
                tables=tables,
                hnsw=dict(data.get("hnsw") or {}),
                postgres_version=str(data["postgres_version"]),
                pgvector_version=str(data["pgvector_version"]),
                ragline_version=str(data["ragline_version"]),
                indexes=tuple(IndexSpec.from_json(i) for i in data.get("indexes") or []),
                format_version=int(version),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SnapshotError(f"{where}: malformed manifest ({type(err).__name__}: {err})") from err
        if any(not isinstance(m.get("id"), int) or not isinstance(m.get("dim"), int) for m in manifest.models):
            raise SnapshotError(f"{where}: malformed manifest (a model without an integer id and dim)")
        absent = [t for t in TABLES if t not in tables]
        if absent:
            raise SnapshotError(f"{where}: the manifest lists no file for table(s) {', '.join(absent)}")
        return manifest
