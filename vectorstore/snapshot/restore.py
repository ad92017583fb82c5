"""Restore a verified snapshot into an empty database: one transaction for every row, indexes built after."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from typing import LiteralString, cast

import fsspec
import psycopg
import pyarrow.parquet as pq
from psycopg import sql

from vectorstore import generations
from vectorstore.db import Connection, DatabaseError, first_line
from vectorstore.generations import ModelIdentity
from vectorstore.indexing import IndexOptions, build_index
from vectorstore.migrations import FULL_TEXT_INDEX, MIGRATIONS, full_text_ddl, full_text_present, index_name, migrate
from vectorstore.snapshot.catalog import hnsw_indexes, require_idle, table_columns
from vectorstore.snapshot.format import (
    HNSW_DEFAULTS,
    TABLES,
    IndexSpec,
    Manifest,
    SnapshotError,
    TableFile,
    from_arrow,
    wrong_dimension,
)
from vectorstore.snapshot.location import open_location
from vectorstore.snapshot.verify import model_mismatch, verify_snapshot

log = logging.getLogger(__name__)


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
    require_idle(conn)
    try:
        occupied = _occupied(conn)
        conn.commit()
        if occupied:
            held = ", ".join(f"{table}: {n} rows" for table, n in occupied.items())
            raise SnapshotError(f"the database is not empty ({held}): restore only into an empty database")
        hnsw = {**HNSW_DEFAULTS, **{k: v for k, v in manifest.hnsw.items() if isinstance(v, int)}}
        migrate(conn, _schema_dim(manifest), hnsw_m=hnsw["m"], hnsw_ef_construction=hnsw["ef_construction"])
        _check_columns(manifest, conn)
        conn.commit()
        fs, root = open_location(src)
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
            present = hnsw_indexes(conn)
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
