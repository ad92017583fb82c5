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


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["hybrid", "vector"] = Field(
        default="hybrid",
        description="hybrid: vector and full-text rankings fused (reciprocal rank fusion); vector: cosine only.",
    )
    ef_search: int = Field(default=100, ge=1, le=1000, description="HNSW query-time candidate list.")
    candidates: int = Field(default=50, ge=1, le=1000, description="Candidates per ranking before fusion.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant (60 in the RRF paper).")
