"""Disaster-recovery snapshots of the store: chunks with their vectors, the documents ledger, sources with their
cursors and model generations, exported from one consistent view into portable Parquet files and a manifest.

Embeddings are the expensive part of the store to recreate, so a snapshot keeps them as they are, readable by
any Parquet reader: ``fixed_size_list<float32>[dim]`` when every chunk's model makes vectors of one dimension
(the common case), ``list<float32>`` when generations of different dimensions hold chunks (a re-embed into a
model of another dimension was in progress). The layout of a snapshot (a directory or an fsspec URL)::

    sources.parquet  models.parquet  documents.parquet  chunks.parquet  manifest.json

``manifest.json`` is written last: a directory without it is an incomplete snapshot. It records the format
version, the schema version, every model generation (dimension, state, chunk count), the HNSW index of each
generation that had one, and the row count, byte size and sha256 of every file.

Columns are read from the catalogue, so columns added by later migrations are carried without code changes; a
column type this module cannot carry fails the snapshot loudly. Generated columns (``chunks.tsv``) are not
stored: Postgres computes them again on restore. Run history (``runs``) and transient bookkeeping
(``index_loads``, ``store_stats``) are not stored: they describe the old database, not the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any, LiteralString, cast

import fsspec
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format, TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types import TypeInfo
from psycopg.types.json import Json, Jsonb

from vectorstore import generations
from vectorstore.db import Connection, DatabaseError, first_line
from vectorstore.generations import ModelIdentity
from vectorstore.indexing import IndexOptions, build_index
from vectorstore.migrations import FULL_TEXT_INDEX, MIGRATIONS, full_text_ddl, full_text_present, index_name, migrate

log = logging.getLogger(__name__)

FORMAT = "ragline-snapshot"
FORMAT_VERSION = 2
"""2: model states, per-generation indexes, variable-length vectors when dimensions differ."""
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
TABLES = ("sources", "models", "documents", "chunks")
"""In load order: every table after the tables it references."""

_HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}
"""pgvector's own defaults: what an index built without options has."""
_INDEX_TYPES = {"vector_cosine_ops": "vector", "halfvec_cosine_ops": "halfvec"}
_HASH_BLOCK = 1 << 20


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


def _select_expr(column: Column) -> sql.Composable:
    if column.type in ("json", "jsonb"):
        return sql.SQL("{}::text").format(sql.Identifier(column.name))
    return sql.Identifier(column.name)


class _RawVector(Loader):
    """Binary ``vector`` values as their bytes (a 4-byte header, then big-endian float32s): a batch of them
    becomes one numpy array at once instead of one Python object per row."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


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
        if spec.type not in _INDEX_TYPES.values():
            raise ValueError(f"index type {spec.type!r} is not one of {', '.join(sorted(_INDEX_TYPES.values()))}")
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


# -- locations ----------------------------------------------------------------------------------------------


def child_url(root: str, name: str) -> str:
    """``name`` under a directory path or fsspec URL."""
    return root.rstrip("/") + "/" + name


def _open_location(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = url_to_fs(url)
    except (ValueError, ImportError) as err:
        raise SnapshotError(f"{url}: unusable snapshot location: {first_line(err)}") from err
    return fs, str(path).rstrip("/") or "/"


def _sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# -- create -------------------------------------------------------------------------------------------------


def _require_idle(conn: Connection) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise SnapshotError("the connection is inside a transaction: commit or roll back before a snapshot")


def table_columns(conn: Connection, table: str) -> list[Column]:
    """Stored (not generated, not dropped) columns of ``table``, in table order."""
    rows = conn.execute(
        """
        SELECT a.attname AS name, t.typname AS type, a.atttypmod AS typmod
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attnum
        """,
        (table,),
    ).fetchall()
    return [
        Column(r["name"], r["type"], r["typmod"] if r["type"] == "vector" and r["typmod"] > 0 else None) for r in rows
    ]


def _hnsw_indexes(conn: Connection) -> list[dict[str, Any]]:
    """HNSW indexes on chunks, found by access method (a generation's index is on an expression, so it names no
    column): name, validity, operator class, options and the catalogue's definition."""
    rows = conn.execute(
        """
        SELECT c.relname AS name, x.indisvalid AS valid, oc.opcname AS opclass, c.reloptions AS options,
               pg_get_indexdef(x.indexrelid) AS definition
        FROM pg_index x
        JOIN pg_class c ON c.oid = x.indexrelid
        JOIN pg_am am ON am.oid = c.relam
        JOIN pg_opclass oc ON oc.oid = x.indclass[0]
        WHERE x.indrelid = to_regclass('chunks') AND am.amname = 'hnsw'
        ORDER BY c.relname
        """
    ).fetchall()
    indexes = []
    for r in rows:
        options: dict[str, Any] = {}
        for item in r["options"] or []:
            key, _, value = str(item).partition("=")
            options[key] = int(value) if value.isdigit() else value
        indexes.append({**r, "options": options})
    return indexes


def index_specs(indexes: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]]) -> list[IndexSpec]:
    """The generation indexes among ``indexes`` (from ``_hnsw_indexes``): valid ones, named as ragline names
    the index of one of ``models``, with an operator class it builds. Others are not carried (and said so)."""
    owners = {index_name(int(m["id"])): int(m["id"]) for m in models}
    specs = []
    for index in indexes:
        model_id, kind = owners.get(index["name"]), _INDEX_TYPES.get(index["opclass"])
        if model_id is None or kind is None:
            log.warning(
                "HNSW index %s on chunks is not a model generation's index: the snapshot does not list it",
                index["name"],
            )
        elif index["valid"]:  # an invalid one is a build that failed: the generation has no index
            options = {**_HNSW_DEFAULTS, **index["options"]}
            specs.append(IndexSpec(model_id, kind, int(options["m"]), int(options["ef_construction"])))
    return specs


def _hnsw_options(specs: Sequence[IndexSpec], indexes: Sequence[dict[str, Any]], serving: set[int]) -> dict[str, Any]:
    chosen = next((s for s in specs if s.model_id in serving), specs[0] if specs else None)
    if chosen is not None:
        return {"m": chosen.m, "ef_construction": chosen.ef_construction}
    if indexes:  # a store from before generations: its one index on the column
        return {**_HNSW_DEFAULTS, **{k: v for k, v in indexes[0]["options"].items() if k in _HNSW_DEFAULTS}}
    return {}


def _read_models(conn: Connection) -> list[dict[str, Any]]:
    """Every model with its state (where the schema has states) and chunk count, in one scan of chunks."""
    has_state = any(c.name == "state" for c in table_columns(conn, "models"))
    rows = conn.execute(
        sql.SQL(
            """
            SELECT m.id, m.name, m.revision, m.dim, m.normalized, {state} AS state, coalesce(n.chunks, 0) AS chunks
            FROM models m LEFT JOIN (SELECT model_id, count(*) AS chunks FROM chunks GROUP BY model_id) n
                 ON n.model_id = m.id
            ORDER BY m.id
            """
        ).format(state=sql.SQL("m.state") if has_state else sql.SQL("NULL::text"))
    ).fetchall()
    return [{k: v for k, v in r.items() if k != "state" or has_state} for r in rows]


def _stored_vector_column(column: Column, models: Sequence[dict[str, Any]]) -> Column:
    """How chunks.embedding is stored: fixed-size lists when every chunk's model makes vectors of one dimension
    (or, in a store without chunks, the serving model does), variable-length lists otherwise."""
    if column.dim is not None:  # a typed column (a schema before v4): every vector has its dimension
        return column
    dims = {int(m["dim"]) for m in models if m["chunks"]} or {
        int(m["dim"]) for m in models if m.get("state") == "active"
    }
    return Column(column.name, column.type, dims.pop() if len(dims) == 1 else None)


def _stream_table(
    conn: Connection,
    table: str,
    columns: Sequence[Column],
    fs: fsspec.AbstractFileSystem,
    path: str,
    batch_rows: int,
) -> int:
    """Copy one table to a Parquet file, one row group per batch, through a server-side cursor."""
    select = sql.SQL("SELECT {cols} FROM {table}{order}").format(
        cols=sql.SQL(", ").join(_select_expr(c) for c in columns),
        table=sql.Identifier(table),
        # Small tables in id order (stable files); chunks in heap order (no sort of the big table).
        order=sql.SQL("") if table == "chunks" else sql.SQL(" ORDER BY 1"),
    )
    schema = arrow_schema(table, columns)
    plain = [c.name for c in columns if c.type != "vector"]
    total = 0
    with (
        fs.open(path, "wb") as fh,
        pq.ParquetWriter(fh, schema, compression="zstd", use_dictionary=plain) as writer,
        conn.cursor(name=f"ragline_snapshot_{table}", binary=True, row_factory=tuple_row) as cur,
    ):
        if any(c.type == "vector" for c in columns):
            info = TypeInfo.fetch(conn, "vector")
            if info is None:
                raise SnapshotError("the pgvector extension is missing")
            cur.adapters.register_loader(info.oid, _RawVector)
        cur.itersize = batch_rows
        cur.execute(select)
        while rows := cur.fetchmany(batch_rows):
            writer.write_batch(pa.record_batch(to_arrow(columns, rows), schema=schema))
            total += len(rows)
    return total


def create_snapshot(conn: Connection, dest: str, *, batch_rows: int = 4096) -> Manifest:
    """Write a snapshot of the store to ``dest`` (a directory or fsspec URL that holds no snapshot yet).

    Every read happens in one REPEATABLE READ READ ONLY transaction, so files and counts describe one instant
    of the database while ingestion goes on. Tables stream in batches of ``batch_rows`` (one Parquet row group
    each): memory stays flat however many chunks the store holds.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    fs, root = _open_location(dest)
    manifest_path = posixpath.join(root, MANIFEST)
    if fs.exists(manifest_path):
        raise SnapshotError(f"{dest} already holds a snapshot ({MANIFEST} exists): choose a new destination")
    _require_idle(conn)
    fs.makedirs(root, exist_ok=True)
    written: dict[str, tuple[list[Column], int]] = {}
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            schema = conn.execute("SELECT to_regclass('ragline_migrations') IS NOT NULL AS present").fetchone()
            if not (schema and schema["present"]):
                raise SnapshotError("the database has no ragline schema: nothing to snapshot")
            version_row = conn.execute("SELECT max(version) AS v FROM ragline_migrations").fetchone()
            info = conn.execute(
                """
                SELECT current_setting('server_version') AS postgres,
                       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector
                """
            ).fetchone()
            models = _read_models(conn)
            hnsw = _hnsw_indexes(conn)
            for table in TABLES:
                columns = table_columns(conn, table)
                if table == "chunks":
                    columns = [_stored_vector_column(c, models) if c.type == "vector" else c for c in columns]
                for column in columns:
                    arrow_type(column)  # fail before writing anything
                rows = _stream_table(conn, table, columns, fs, posixpath.join(root, f"{table}.parquet"), batch_rows)
                written[table] = (columns, rows)
    except psycopg.Error as err:
        raise DatabaseError(f"snapshot to {dest} failed: {first_line(err)}") from err
    assert version_row is not None and info is not None
    vectors = [c for c in written["chunks"][0] if c.type == "vector"]
    if [c.name for c in vectors] != ["embedding"]:
        raise SnapshotError("chunks has no single vector column named embedding: the schema is not ragline's")
    tables = {}
    for table, (columns, rows) in written.items():
        path = posixpath.join(root, f"{table}.parquet")
        tables[table] = TableFile(
            table=table,
            file=f"{table}.parquet",
            rows=rows,
            bytes=int(fs.size(path)),
            sha256=_sha256(fs, path),  # of the stored bytes, read back
            columns=tuple(columns),
        )
    specs = index_specs(hnsw, models)
    manifest = Manifest(
        created_at=datetime.now(UTC).isoformat(),
        schema_version=int(version_row["v"]),
        vector_dim=vectors[0].dim,
        models=tuple(models),
        tables=tables,
        hnsw=_hnsw_options(specs, hnsw, {int(m["id"]) for m in models if m.get("state") == "active"}),
        postgres_version=str(info["postgres"]),
        pgvector_version=str(info["pgvector"]),
        ragline_version=_ragline_version(),
        indexes=tuple(specs),
    )
    body = json.dumps(manifest.as_json(), indent=2, sort_keys=True).encode()
    partial = manifest_path + ".partial"
    fs.pipe_file(partial, body)
    fs.mv(partial, manifest_path)  # a rename where the filesystem has one: the manifest appears whole
    return manifest


def _ragline_version() -> str:
    try:
        return metadata.version("ragline")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- verify -------------------------------------------------------------------------------------------------


def read_manifest(src: str) -> Manifest:
    fs, root = _open_location(src)
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
    fs, root = _open_location(src)
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
        if _sha256(fs, path) != entry.sha256:
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


# -- restore ------------------------------------------------------------------------------------------------


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


def _occupied(conn: Connection) -> dict[str, int]:
    """Tables of ragline that hold rows (only those that exist)."""
    counts: dict[str, int] = {}
    for table in TABLES:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS e", (table,)).fetchone()
        if exists and exists["e"]:
            row = conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table))).fetchone()
            if row and row["n"]:
                counts[table] = int(row["n"])
    return counts


def _schema_dim(manifest: Manifest) -> int:
    """The dimension the first migrations type the column with (v4 makes it untyped again): the serving
    model's, any model's, anything for a store without models."""
    models = [*manifest.serving, *manifest.models]
    return int(models[0]["dim"]) if models else 1


def _check_columns(manifest: Manifest, conn: Connection) -> None:
    for table in TABLES:
        target = {c.name: c for c in table_columns(conn, table)}
        for column in manifest.tables[table].columns:
            here = target.get(column.name)
            if here is None:
                raise SnapshotError(f"table {table} of the database has no column {column.name} to restore into")
            if here.type != column.type:
                raise SnapshotError(
                    f"column {table}.{column.name} is {here.type} in the database but {column.type} in the snapshot"
                )


def _copy_table(
    conn: Connection,
    fs: fsspec.AbstractFileSystem,
    root: str,
    entry: TableFile,
    batch_rows: int,
    dims: Mapping[int, int] | None = None,
) -> int:
    """Load one file by binary COPY; with ``dims`` (model id to dimension), every vector must have its model's
    dimension: the untyped column would take any, and the generation's index build would fail on it."""
    copy_sql = sql.SQL("COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)").format(
        table=sql.Identifier(entry.table), cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in entry.columns)
    )
    loaded = 0
    with fs.open(posixpath.join(root, entry.file), "rb") as fh, conn.cursor().copy(copy_sql) as copy:
        copy.set_types([c.type for c in entry.columns])
        # No pre-buffering: it reads every row group ahead, the whole file, into memory.
        parquet = pq.ParquetFile(fh, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[c.name for c in entry.columns]):
            wrong = wrong_dimension(batch, dims) if dims is not None else None
            if wrong is not None:
                chunk_id, model_id, n, expected = wrong
                makes = f"makes {expected}-dim ones" if expected is not None else "is not a model of the snapshot"
                raise SnapshotError(
                    f"{entry.file}: chunk {chunk_id} holds a {n}-dim vector, but its model {model_id} {makes}"
                )
            for row in from_arrow(entry.columns, batch):
                copy.write_row(row)
            loaded += batch.num_rows
    return loaded


def _reset_sequences(conn: Connection, table: str) -> None:
    """Ids were kept: move each serial sequence past the largest id, so new rows do not collide."""
    rows = conn.execute(
        """
        SELECT a.attname AS column, pg_get_serial_sequence(%s, a.attname) AS seq
        FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (table, table),
    ).fetchall()
    for r in rows:
        if r["seq"] is None:
            continue
        conn.execute(
            sql.SQL("SELECT setval(%s::regclass, coalesce(max({col}), 1), max({col}) IS NOT NULL) FROM {table}").format(
                col=sql.Identifier(r["column"]), table=sql.Identifier(table)
            ),
            (r["seq"],),
        )


# A store from before generations (no states): the model of its newest chunks serves, as migration v4 decides.
_ACTIVATE_NEWEST = """
UPDATE models SET state = 'active', state_changed_at = now()
WHERE id = (SELECT model_id FROM chunks GROUP BY model_id ORDER BY max(created_at) DESC LIMIT 1)
"""


def _build_indexes(conn: Connection, manifest: Manifest, hnsw: dict[str, int], maintenance_work_mem: str) -> None:
    """Build the snapshot's generation indexes once, after the load (far cheaper than row-by-row inserts). The
    serving generation gets one even where the snapshot lists none (a large load had dropped it, or the
    snapshot predates generations)."""
    specs = {s.model_id: s for s in manifest.indexes}
    serving = generations.active(conn)
    if serving is not None and serving.id not in specs:
        kind = next((s.type for s in specs.values()), "vector")
        specs[serving.id] = IndexSpec(serving.id, kind, hnsw["m"], hnsw["ef_construction"])
    for spec in specs.values():
        generation = generations.by_id(conn, spec.model_id)
        if generation is None:
            raise SnapshotError(f"the manifest lists an index of model {spec.model_id}, which models.parquet lacks")
        options = IndexOptions(
            m=spec.m,
            ef_construction=spec.ef_construction,
            index_type=spec.type,
            maintenance_work_mem=maintenance_work_mem,
        )
        build_index(conn, generation, options)


def restore_snapshot(
    conn: Connection,
    src: str,
    *,
    model: ModelIdentity | None = None,
    force: bool = False,
    batch_rows: int = 4096,
    maintenance_work_mem: str = "512MB",
) -> Manifest:
    """Restore a verified snapshot into an empty database, keeping every id and every generation's state.

    The schema is migrated first (to the latest version, which holds the snapshot's: migrations only add),
    then everything loads in one transaction: a failure anywhere leaves the database without a single restored
    row. HNSW indexes are built once after the load, each generation's as the snapshot describes it; HNSW
    indexes the empty database had are dropped for the load and built again after it. ``model`` is the
    configured model: vectors of another model cannot answer its queries, so a mismatch (``model_mismatch``)
    is refused unless ``force``. A database holding any ragline rows is always refused: a restore never mixes
    or overwrites data.
    """
    manifest = verify_snapshot(src)
    latest = max(version for version, _, _ in MIGRATIONS)
    if manifest.schema_version > latest:
        raise SnapshotError(
            f"{src} has schema version {manifest.schema_version}, newer than this ragline's {latest}: upgrade ragline"
        )
    if model is not None and not force:
        why = model_mismatch(manifest, model)
        if why:
            raise SnapshotError(f"{why}: configure that model, or force the restore (--force)")
    _require_idle(conn)
    try:
        occupied = _occupied(conn)
        conn.commit()
        if occupied:
            held = ", ".join(f"{table}: {n} rows" for table, n in occupied.items())
            raise SnapshotError(f"the database is not empty ({held}): restore only into an empty database")
        hnsw = {**_HNSW_DEFAULTS, **{k: v for k, v in manifest.hnsw.items() if isinstance(v, int)}}
        migrate(conn, _schema_dim(manifest), hnsw_m=hnsw["m"], hnsw_ef_construction=hnsw["ef_construction"])
        _check_columns(manifest, conn)
        conn.commit()
        fs, root = _open_location(src)
        dims = {int(m["id"]): int(m["dim"]) for m in manifest.models}
        decided = {index_name(model_id) for model_id in dims}  # the snapshot says which of these exist
        with conn.transaction():
            conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
                )
            )
            if _occupied(conn):  # filled since the first look
                raise SnapshotError("the database was written to during the restore: restore only into an empty one")
            # An index on the empty table would take the load row by row (the full-text one too).
            present = _hnsw_indexes(conn)
            for index in present:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index["name"])))
            full_text = full_text_present(conn)
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(FULL_TEXT_INDEX)))
            for table in TABLES:
                entry = manifest.tables[table]
                checked = table == "chunks" and {"embedding", "model_id"} <= {c.name for c in entry.columns}
                loaded = _copy_table(conn, fs, root, entry, batch_rows, dims if checked else None)
                if loaded != manifest.rows(table):
                    raise SnapshotError(f"{table}: loaded {loaded} rows, the manifest says {manifest.rows(table)}")
                _reset_sequences(conn, table)
                log.info("loaded %d rows into %s", loaded, table)
            if not any(c.name == "state" for c in manifest.tables["models"].columns):
                conn.execute(_ACTIVATE_NEWEST)
            _build_indexes(conn, manifest, hnsw, maintenance_work_mem)
            for index in present:
                if index["name"] not in decided:
                    log.info("building %s again", index["name"])
                    # Text this database's own catalogue wrote (pg_get_indexdef), never text from the snapshot.
                    conn.execute(cast(LiteralString, index["definition"]))
            if full_text:
                conn.execute(full_text_ddl())
            for table in TABLES:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    except psycopg.Error as err:
        raise DatabaseError(f"restore of {src} failed, nothing was restored: {first_line(err)}") from err
    return manifest


# -- retention ----------------------------------------------------------------------------------------------

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
    fs, path = _open_location(root)
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
    fs, path = _open_location(root)
    for name in names:
        if parse_snapshot_name(name) is None:
            raise ValueError(f"{name!r} is not a snapshot name")
        fs.rm(posixpath.join(path, name), recursive=True)
