"""Write a snapshot: every table streamed from one consistent view into Parquet, the manifest last.

Columns are read from the catalogue, so columns added by later migrations are carried without code changes; a
column type the format cannot carry fails the snapshot loudly. Generated columns (``chunks.tsv``) are not
stored: Postgres computes them again on restore. Run history (``runs``) and transient bookkeeping
(``index_loads``, ``store_stats``) are not stored: they describe the old database, not the data.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import fsspec
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.rows import tuple_row
from psycopg.types import TypeInfo

from vectorstore.db import Connection, DatabaseError, first_line
from vectorstore.migrations import index_name
from vectorstore.snapshot.catalog import hnsw_indexes, require_idle, table_columns
from vectorstore.snapshot.format import (
    HNSW_DEFAULTS,
    INDEX_TYPES,
    MANIFEST,
    TABLES,
    Column,
    IndexSpec,
    Manifest,
    SnapshotError,
    TableFile,
    arrow_schema,
    arrow_type,
    to_arrow,
)
from vectorstore.snapshot.location import file_sha256, open_location

log = logging.getLogger(__name__)


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


def index_specs(indexes: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]]) -> list[IndexSpec]:
    """The generation indexes among ``indexes`` (from ``hnsw_indexes``): valid ones, named as ragline names
    the index of one of ``models``, with an operator class it builds. Others are not carried (and said so)."""
    owners = {index_name(int(m["id"])): int(m["id"]) for m in models}
    specs = []
    for index in indexes:
        model_id, kind = owners.get(index["name"]), INDEX_TYPES.get(index["opclass"])
        if model_id is None or kind is None:
            log.warning(
                "HNSW index %s on chunks is not a model generation's index: the snapshot does not list it",
                index["name"],
            )
        elif index["valid"]:  # an invalid one is a build that failed: the generation has no index
            options = {**HNSW_DEFAULTS, **index["options"]}
            specs.append(IndexSpec(model_id, kind, int(options["m"]), int(options["ef_construction"])))
    return specs


def _hnsw_options(specs: Sequence[IndexSpec], indexes: Sequence[dict[str, Any]], serving: set[int]) -> dict[str, Any]:
    chosen = next((s for s in specs if s.model_id in serving), specs[0] if specs else None)
    if chosen is not None:
        return {"m": chosen.m, "ef_construction": chosen.ef_construction}
    if indexes:  # a store from before generations: its one index on the column
        return {**HNSW_DEFAULTS, **{k: v for k, v in indexes[0]["options"].items() if k in HNSW_DEFAULTS}}
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
    fs, root = open_location(dest)
    manifest_path = posixpath.join(root, MANIFEST)
    if fs.exists(manifest_path):
        raise SnapshotError(f"{dest} already holds a snapshot ({MANIFEST} exists): choose a new destination")
    require_idle(conn)
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
            hnsw = hnsw_indexes(conn)
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
            sha256=file_sha256(fs, path),  # of the stored bytes, read back
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
