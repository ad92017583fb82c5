"""Versioned schema migrations, applied by ragline itself under an advisory lock.

A migration is a function of the vector dimension and HNSW options (the first schema typed the column
``vector(n)``; since v4 the column is untyped and each model generation has its own partial HNSW index over
``embedding::vector(dim)``, so two models of different dimensions share the table during a re-embed).
Append new migrations; never edit an applied one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from vectorstore.db import Connection, DatabaseError, first_line, register_pgvector

log = logging.getLogger(__name__)

_LOCK_KEY = 0x7261676C696E65  # "ragline"


def _v1_initial(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute(
        """
        CREATE TABLE sources (
            id          bigserial PRIMARY KEY,
            name        text NOT NULL UNIQUE,
            kind        text NOT NULL,
            cursor      jsonb,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE models (
            id          serial PRIMARY KEY,
            name        text NOT NULL,
            revision    text NOT NULL,
            dim         integer NOT NULL,
            normalized  boolean NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (name, revision, dim, normalized)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE documents (
            id                   bigserial PRIMARY KEY,
            source_id            bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
            external_id          text NOT NULL,
            uri                  text NOT NULL,
            title                text,
            content_hash         text NOT NULL,
            committed_hash       text,
            fingerprint          text,
            status               text NOT NULL
                                 CHECK (status IN ('committed', 'quarantined', 'deleted')),
            attempts             integer NOT NULL DEFAULT 0,
            error_reason         text,
            last_error           text,
            retry_after          timestamptz,
            chunk_count          integer NOT NULL DEFAULT 0,
            page_count           integer,
            metadata             jsonb NOT NULL DEFAULT '{}',
            source_modified_at   timestamptz,
            created_at           timestamptz NOT NULL DEFAULT now(),
            updated_at           timestamptz NOT NULL DEFAULT now(),
            committed_at         timestamptz,
            UNIQUE (source_id, external_id)
        )
        """
    )
    conn.execute("CREATE INDEX documents_quarantined_idx ON documents (source_id) WHERE status = 'quarantined'")
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE chunks (
                id            uuid PRIMARY KEY,
                document_id   bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
                chunk_index   integer NOT NULL,
                page          integer,
                text          text NOT NULL,
                token_count   integer NOT NULL,
                model_id      integer NOT NULL REFERENCES models (id),
                embedding     vector({dim}) NOT NULL,
                metadata      jsonb NOT NULL DEFAULT '{{}}',
                created_at    timestamptz NOT NULL DEFAULT now()
            )
            """
        ).format(dim=sql.Literal(dim))
    )
    conn.execute("CREATE INDEX chunks_document_idx ON chunks (document_id, chunk_index)")
    conn.execute(
        sql.SQL(
            "CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = {m}, ef_construction = {ef})"
        ).format(m=sql.Literal(m), ef=sql.Literal(ef_construction))
    )
    conn.execute(
        """
        CREATE TABLE runs (
            id           bigserial PRIMARY KEY,
            source_id    bigint REFERENCES sources (id) ON DELETE CASCADE,
            flow_run_id  uuid,
            pid          integer,
            status       text NOT NULL
                         CHECK (status IN ('running', 'completed', 'completed_with_quarantine', 'failed',
                                           'abandoned')),
            counts       jsonb NOT NULL DEFAULT '{}',
            error        text,
            started_at   timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz
        )
        """
    )
    conn.execute("CREATE INDEX runs_source_idx ON runs (source_id, started_at DESC)")


def _v2_full_text(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Full-text ranking for hybrid search: exact phrases (names, codes, quoted passages) that embeddings of a
    small model blur are found by their words."""
    _add_full_text(conn)


FULL_TEXT_INDEX = "chunks_tsv_gin"


def full_text_ddl() -> sql.Composed:
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON chunks USING gin (tsv)").format(sql.Identifier(FULL_TEXT_INDEX))


def _add_full_text(conn: Connection) -> None:
    conn.execute("ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED")
    conn.execute(full_text_ddl())


def _v3_run_holders(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Which host ran a run (a pid means nothing on another machine) and the Prefect lease it held on its
    source, so a run killed outright does not keep its source locked until the lease expires."""
    conn.execute("ALTER TABLE runs ADD COLUMN host text, ADD COLUMN lease_id uuid")


def _v4_generations_tenants(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Model generations (one active, at most one being built, the rest retired), one partial HNSW index per
    generation, a tenant on every row, and the bookkeeping of loads that run without the live index."""
    conn.execute("DROP INDEX IF EXISTS chunks_embedding_hnsw")
    conn.execute("ALTER TABLE chunks ALTER COLUMN embedding TYPE vector")
    conn.execute(
        """
        ALTER TABLE models
            ADD COLUMN state text NOT NULL DEFAULT 'retired' CHECK (state IN ('active', 'building', 'retired')),
            ADD COLUMN state_changed_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN fingerprint text
        """
    )
    conn.execute("CREATE UNIQUE INDEX models_one_active ON models ((true)) WHERE state = 'active'")
    conn.execute("CREATE UNIQUE INDEX models_one_building ON models ((true)) WHERE state = 'building'")
    # The model of the newest chunks serves search; chunks of older models are replaced as documents change.
    conn.execute(
        """
        UPDATE models SET state = 'active'
        WHERE id = (SELECT model_id FROM chunks GROUP BY model_id ORDER BY max(created_at) DESC LIMIT 1)
        """
    )
    for table in ("sources", "documents", "chunks"):
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN tenant text NOT NULL DEFAULT 'default'").format(sql.Identifier(table))
        )
    conn.execute(
        """
        CREATE TABLE index_loads (
            holder      text PRIMARY KEY,
            model_id    integer NOT NULL REFERENCES models (id) ON DELETE CASCADE,
            host        text NOT NULL,
            pid         integer NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE store_stats (
            key         text PRIMARY KEY,
            value       double precision NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for row in conn.execute("SELECT id, dim FROM models WHERE state = 'active'").fetchall():
        conn.execute(index_ddl(row["id"], row["dim"], "vector", m, ef_construction))


def _v5_rows_inline(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Rows of chunks stay whole in their page up to 8 KB. A chunk row (a 1.5 KB vector, ~0.5 KB of text,
    ~1 KB of tsvector) is past the default 2 KB threshold, so every insert tried to compress the text and
    the tsvector and moved the largest value, the vector, out to the TOAST table: ~25% of the server's CPU
    per row written (a 20k-row COPY, 124-140 us a row, against 96-104), and every exact scan or index build
    fetched each vector back (an exact scan of 100k: 322 ms, 111-118 ms after). Costs ~15% more heap; rows
    over 8 KB are still compressed and moved out. Applies to rows written from now on."""
    conn.execute("ALTER TABLE chunks SET (toast_tuple_target = 8160)")


def _v6_stat_keys(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """A source's cheap change signal per document (PDF files: size, mtime, ctime, inode): when it matches,
    the recorded content hash is trusted and the file is not read (re-hashing 100k unchanged files on network
    storage costs minutes). NULL: unknown, read and hash."""
    conn.execute("ALTER TABLE documents ADD COLUMN stat_key text")


def _v7_held_deletions(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Deletions held by the mass-delete guard (``flows/delete_guard.py``): a document its source seems to have
    lost is marked, not deleted, and keeps its chunks until the run's total passes the guard or an operator
    confirms. A marker beside ``status`` rather than a status of its own: a held document is still committed
    (or quarantined) in every other respect, and every rule on ``status`` stays as it was."""
    conn.execute("ALTER TABLE documents ADD COLUMN delete_held_at timestamptz")
    conn.execute("CREATE INDEX documents_delete_held_idx ON documents (source_id) WHERE delete_held_at IS NOT NULL")


TEXT_LOOKUP_INDEX = "chunks_text_lookup_idx"


def _v8_text_lookup(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Chunks found by their exact text within a model generation (``vectorstore/reuse.py``): a text already
    embedded by that model takes its stored vector instead of being embedded again. The key is one 64-bit
    hash of the text seeded with the generation's id, computed by the server (immutable, the same bytes on
    both sides of the comparison, no FIPS-restricted digest); lookups compare the text itself too, so a
    collision costs a heap fetch, never a wrong vector. One opaque key, not (model_id, hash): an index with a
    ``model_id`` column serves any query of one generation, and the planner took it over the generation's HNSW
    index on small stores (PostgreSQL 18 skip-scans a leading hash too). An index, not a column or a table:
    nothing to backfill, to snapshot or to keep consistent, and no vector outlives the chunk rows (and the
    tenant's data) it was read from."""
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON chunks (hashtextextended(text, model_id::bigint))").format(
            sql.Identifier(TEXT_LOOKUP_INDEX)
        )
    )


def _v9_observability(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """What operators watch, kept in Postgres beside the run (W2 5/5): the run's OpenTelemetry trace id (to
    find its spans from ``ragline status`` or a Prefect log), its figures (phase times, tokens/s, batch sizes,
    retries: what a Pushgateway would have had, for runs no Prometheus scraped), and its drift against its
    source's embedding baseline."""
    conn.execute("ALTER TABLE runs ADD COLUMN trace_id text, ADD COLUMN figures jsonb, ADD COLUMN drift jsonb")


def _v10_drift_canary(conn: Connection, dim: int, m: int, ef_construction: int) -> None:
    """Embedding drift baselines per source and model generation, and the model canary's stored vectors
    (``vectorstore/baselines.py``). A baseline keeps a sample's statistics, not its vectors: the mean and
    per-dimension variance, the sorted cosines of the sample to its centroid and its chunks' token lengths
    (enough for two-sample tests); a reset keeps the replaced one (``replaced_at``) for the record. Arrays, not
    ``vector``: statistics are not searched, and a generation's dimension is its own."""
    conn.execute(
        """
        CREATE TABLE drift_baselines (
            id             bigserial PRIMARY KEY,
            source_id      bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
            model_id       integer NOT NULL REFERENCES models (id) ON DELETE CASCADE,
            origin         text NOT NULL,
            run_id         bigint REFERENCES runs (id) ON DELETE SET NULL,
            chunks         integer NOT NULL,
            sample_size    integer NOT NULL,
            mean           float8[] NOT NULL,
            variance       float8[] NOT NULL,
            cosines        float4[] NOT NULL,
            token_lengths  float4[] NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            replaced_at    timestamptz
        )
        """
    )
    conn.execute(
        "CREATE UNIQUE INDEX drift_baselines_current ON drift_baselines (source_id, model_id) WHERE replaced_at IS NULL"
    )
    conn.execute(
        """
        CREATE TABLE model_canaries (
            model_id      integer PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
            texts_digest  text NOT NULL,
            vectors       float4[] NOT NULL,
            stored_at     timestamptz NOT NULL DEFAULT now(),
            status        text NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'mismatch')),
            checked_at    timestamptz,
            checked_by    text,
            min_cosine    double precision,
            mean_cosine   double precision,
            worst_text    text
        )
        """
    )


def full_text_present(conn: Connection) -> bool:
    """Whether chunks carry the full-text column (``database.full_text``): hybrid search needs it."""
    row = conn.execute(
        """
        SELECT EXISTS (SELECT 1 FROM pg_attribute
                       WHERE attrelid = 'chunks'::regclass AND attname = 'tsv' AND NOT attisdropped) AS present
        """
    ).fetchone()
    return bool(row and row["present"])


def set_full_text(conn: Connection, enabled: bool) -> bool:
    """Add or drop the full-text column and its GIN index (``database.full_text``); True if it changed.

    The column costs every write: computing ``to_tsvector``, storing ~1 KB of tsvector per chunk and entering
    the GIN index made a binary COPY 4-4.5x slower and the store's own bulk load 2x slower
    (docs/benchmarks.md). Stores searched by vector only can go without. Dropping is instant; adding computes
    it for every stored chunk (the table is rewritten under an exclusive lock), once.
    """
    conn.commit()  # a pending read would turn the block below into a savepoint that commits nothing
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        if full_text_present(conn) == enabled:
            return False
        if enabled:
            row = conn.execute("SELECT count(*) AS n FROM chunks").fetchone()
            log.info("adding the full-text column to %s chunks (the table is rewritten once)", row["n"] if row else 0)
            _add_full_text(conn)
        else:
            log.info("dropping the full-text column and index: searches rank by vector only")
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(FULL_TEXT_INDEX)))
            conn.execute("ALTER TABLE chunks DROP COLUMN tsv")
    return True


def index_name(model_id: int) -> str:
    return f"chunks_hnsw_m{model_id}"


def index_ddl(model_id: int, dim: int, index_type: str, m: int, ef_construction: int) -> sql.Composed:
    """The partial HNSW index of one model generation. ``halfvec`` stores the graph's vectors in half
    precision (half the memory the index needs to stay cached); the table keeps full precision."""
    opclass = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops"}[index_type]
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON chunks USING hnsw ((embedding::{type}({dim})) {opclass}) "
        "WITH (m = {m}, ef_construction = {ef}) WHERE model_id = {model}"
    ).format(
        name=sql.Identifier(index_name(model_id)),
        type=sql.SQL(index_type),
        dim=sql.Literal(dim),
        opclass=sql.SQL(opclass),
        m=sql.Literal(m),
        ef=sql.Literal(ef_construction),
        model=sql.Literal(model_id),
    )


Migration = Callable[[Connection, int, int, int], None]

MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema: sources, models, documents ledger, chunks, runs", _v1_initial),
    (2, "full-text column and index on chunks for hybrid search", _v2_full_text),
    (3, "host and concurrency lease of each run", _v3_run_holders),
    (4, "model generations with per-model HNSW indexes, tenants, deferred-index loads", _v4_generations_tenants),
    (5, "chunk rows kept whole in their page up to 8 KB (no TOAST work per write)", _v5_rows_inline),
    (6, "a cheap change signal per document (stat key) to skip reading unchanged files", _v6_stat_keys),
    (7, "deletions held by the mass-delete guard until they pass it or are confirmed", _v7_held_deletions),
    (8, "chunks found by their text within a model generation, to reuse stored vectors", _v8_text_lookup),
    (9, "trace id, figures and drift of each run", _v9_observability),
    (10, "embedding drift baselines per source and the model canary", _v10_drift_canary),
]


def migrate(conn: Connection, dim: int, *, hnsw_m: int = 16, hnsw_ef_construction: int = 64) -> list[int]:
    """Apply pending migrations; returns the versions applied. Safe to call from concurrent processes."""
    applied: list[int] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(
                """
                CREATE TABLE IF NOT EXISTS ragline_migrations (
                    version     integer PRIMARY KEY,
                    name        text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {row["version"] for row in conn.execute("SELECT version FROM ragline_migrations")}
            for version, name, apply in MIGRATIONS:
                if version in done:
                    continue
                apply(conn, dim, hnsw_m, hnsw_ef_construction)
                conn.execute("INSERT INTO ragline_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(version)
    except psycopg.errors.FeatureNotSupported as err:
        raise DatabaseError(f"the pgvector extension is not available: {first_line(err)}") from err
    except psycopg.errors.UndefinedFile as err:
        raise DatabaseError(f"the pgvector extension is not installed on the server: {first_line(err)}") from err
    register_pgvector(conn)
    return applied
