"""Database settings, validated once at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: SecretStr | None = Field(
        default=None,
        description="libpq URL of a Postgres with pgvector; unset: an embedded server under RAGLINE_HOME.",
    )
    hnsw_m: int = Field(default=16, ge=2, le=100, description="HNSW graph degree (index build time).")
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000, description="HNSW build-time candidate list.")
    connect_timeout: int = Field(default=10, ge=1, description="Seconds to wait for a connection.")
    pool_size: int = Field(default=4, ge=1, le=100, description="Connections per process for concurrent searches.")
    reconnect_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a run whose database went away (restart, failover, connections killed) keeps "
        "reconnecting, with backoff, before it fails; it then goes on from the ledger. 0: fail at once.",
    )
    index_type: Literal["vector", "halfvec"] = Field(
        default="vector",
        description="Precision of the vectors in the HNSW graph: halfvec halves the memory the index needs to "
        "stay cached (large stores); the table keeps full precision.",
    )
    maintenance_work_mem: str = Field(
        default="1GB",
        pattern=r"^\d+\s*(kB|MB|GB|TB)$",
        description="Memory for an HNSW build: a graph that does not fit builds ~4x slower (measured here).",
    )
    parallel_maintenance_workers: int | None = Field(
        default=None, ge=0, le=64, description="Parallel workers of an index build (unset: the server's setting)."
    )
    writers: int = Field(
        default=2,
        ge=0,
        le=32,
        description="Connections that commit an ingest's batches in the background while the next batch is "
        "parsed and embedded; several also spread the server's per-row work over cores (the store's bulk "
        "load ran 1.4-1.75x faster with 2 than on one, docs/benchmarks.md). 0: commit on the pipeline's own.",
    )
    bulk_min_rows: int = Field(
        default=1000,
        ge=0,
        description="Loads smaller than this always go into the live index; larger ones without it when the "
        "measured costs say so (vectorstore.bulk).",
    )
    full_text: bool = Field(
        default=True,
        description="The full-text column and GIN index behind hybrid search. Off: searches rank by vector only "
        "and writes are cheaper (the store's bulk load ran 2x faster without it); switching it on later "
        "computes it for every stored chunk once.",
    )
    row_level_security: bool = Field(
        default=False,
        description="Enforce tenant scoping in Postgres: searches for a tenant run as role ragline_tenant under "
        "row-level security policies, so no query can return another tenant's rows.",
    )


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["hybrid", "vector"] = Field(
        default="hybrid",
        description="hybrid: vector and full-text rankings fused (reciprocal rank fusion); vector: cosine only.",
    )
    ef_search: int = Field(default=100, ge=1, le=1000, description="HNSW query-time candidate list.")
    candidates: int = Field(default=50, ge=1, le=1000, description="Candidates per ranking before fusion.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant (60 in the RRF paper).")
    exact: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Exact (sequential) vector search: always, never, or auto: when the generation holds fewer "
        "than exact_below chunks, or has no index (a load without the live index is in progress).",
    )
    exact_below: int = Field(default=10_000, ge=0, description="Generation size under which auto search is exact.")
