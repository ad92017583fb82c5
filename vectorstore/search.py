"""Search: the best chunks of a model generation for a query vector (and its words, in hybrid mode)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from vectorstore import generations
from vectorstore.db import Connection
from vectorstore.generations import Generation
from vectorstore.migrations import full_text_present
from vectorstore.settings import SearchSettings


@dataclass(frozen=True)
class SearchHit:
    """``score`` orders the results (fused rank score in hybrid mode, else cosine similarity);
    ``similarity`` is always the cosine similarity of the chunk to the query."""

    score: float
    similarity: float
    text: str
    source: str
    uri: str
    title: str | None
    page: int | None
    chunk_index: int
    document_id: int

    def as_json(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 6),
            "similarity": round(self.similarity, 6),
            "text": self.text,
            "source": self.source,
            "uri": self.uri,
            "title": self.title,
            "page": self.page,
            "chunk_index": self.chunk_index,
        }


@dataclass(frozen=True)
class SearchFilter:
    """What a search may return: a source, a tenant, documents whose metadata contains ``metadata``."""

    source: str | None = None
    tenant: str | None = None
    metadata: dict[str, Any] | None = None


_FILTERS = sql.SQL(
    """(%(source)s::text IS NULL OR c.document_id IN (
        SELECT d.id FROM documents d JOIN sources s ON s.id = d.source_id WHERE s.name = %(source)s))
    AND (%(tenant)s::text IS NULL OR c.tenant = %(tenant)s)
    AND (%(meta)s::jsonb IS NULL OR c.metadata @> %(meta)s
         OR c.document_id IN (SELECT d.id FROM documents d WHERE d.metadata @> %(meta)s))"""
)


def _queries(model_id: int, distance: sql.Composable) -> dict[str, sql.Composed]:
    """The rankings of one generation. The model id is a literal so the planner can match the generation's
    partial index; ``distance`` is the indexed expression, or the plain column for an exact scan."""
    where = sql.SQL("c.model_id = {model} AND {filters}").format(model=sql.Literal(model_id), filters=_FILTERS)
    return {
        "vector": sql.SQL("SELECT c.id FROM chunks c WHERE {where} ORDER BY {distance} LIMIT %(n)s").format(
            where=where, distance=distance
        ),
        # Chunks holding the query's words as a phrase (in order, after stemming and stop words): quoted
        # passages, names, error messages. Only for queries of several words; ordered by cosine among themselves.
        "phrase": sql.SQL(
            """SELECT c.id FROM chunks c
            WHERE numnode(phraseto_tsquery('english', %(text)s)) >= 5
              AND c.tsv @@ phraseto_tsquery('english', %(text)s) AND {where}
            ORDER BY c.embedding <=> %(q)s LIMIT %(n)s"""
        ).format(where=where),
        # Chunks holding all of the query's words, ranked by cover density (words close together first).
        "all_words": sql.SQL(
            """SELECT c.id FROM chunks c
            WHERE c.tsv @@ plainto_tsquery('english', %(text)s) AND {where}
            ORDER BY ts_rank_cd(c.tsv, plainto_tsquery('english', %(text)s)) DESC, c.id LIMIT %(n)s"""
        ).format(where=where),
        # Any of the query's words: only when too few chunks hold them all (it ranks every chunk with any word).
        "any_words": sql.SQL(
            """WITH q AS (SELECT nullif(replace(plainto_tsquery('english', %(text)s)::text, ' & ', ' | '), '')::tsquery
                          AS tsq)
            SELECT c.id FROM chunks c, q WHERE c.tsv @@ q.tsq AND {where}
            ORDER BY ts_rank_cd(c.tsv, q.tsq) DESC, c.id LIMIT %(n)s"""
        ).format(where=where),
    }


_HITS_SQL = """
SELECT c.id, c.text, c.page, c.chunk_index, c.document_id, c.embedding <=> %(q)s AS distance,
       d.uri, d.title, s.name AS source
FROM chunks c JOIN documents d ON d.id = c.document_id JOIN sources s ON s.id = d.source_id
WHERE c.id = ANY(%(ids)s)
"""


def _unique(*lists: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    seen: dict[uuid.UUID, None] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item, None)
    return list(seen)


def fuse(rankings: Sequence[Sequence[uuid.UUID]], k: int, rrf_k: int = 60) -> list[tuple[uuid.UUID, float]]:
    """Reciprocal rank fusion (Cormack et al., 2009): robust to the incomparable scores of the rankings."""
    scores: dict[uuid.UUID, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))[:k]


class QueryDimensionError(ValueError):
    """The query vector does not come from the serving generation's model."""


TENANT_ROLE = "ragline_tenant"


def search(
    conn: Connection,
    vector: np.ndarray,
    k: int,
    *,
    text: str | None = None,
    settings: SearchSettings | None = None,
    source: str | None = None,
    where: SearchFilter | None = None,
    generation: Generation | None = None,
    row_level_security: bool = False,
) -> list[SearchHit]:
    """Best chunks of the serving generation (or ``generation``) for a query embedded by its model.

    Vector mode: nearest by cosine, through the generation's HNSW index, or an exact scan when the
    generation is small or has no index (a large load is running without it). Hybrid mode (the default,
    when ``text`` is given and the store keeps its full-text column): chunks holding the query as a phrase
    come first (score above 1, ordered by cosine), then the cosine ranking and a full-text ranking (all
    words, or any word when too few chunks hold all) are fused by reciprocal rank fusion. A small embedding
    model blurs exact wording (names, commands, quoted passages); the words find it. Measured on real
    manuals: bench/known_item.py, docs/benchmarks.md.

    With ``row_level_security`` and a tenant, the queries run as role ragline_tenant under Postgres policies
    that only show that tenant's rows, whatever the SQL says.
    """
    settings = settings or SearchSettings()
    where = where or SearchFilter()
    if source is not None:
        where = SearchFilter(source=source, tenant=where.tenant, metadata=where.metadata)
    params: dict[str, Any] = {
        "q": vector,
        "source": where.source,
        "tenant": where.tenant,
        "meta": Jsonb(where.metadata) if where.metadata else None,
        "text": text,
    }
    with conn.transaction():
        # Hybrid needs the full-text column; a store without it (database.full_text off) ranks by vector.
        hybrid = settings.mode == "hybrid" and bool(text and text.strip()) and full_text_present(conn)
        n = params["n"] = max(k, settings.candidates) if hybrid else k
        gen = generation or generations.active(conn)
        if gen is None:
            return []
        if len(vector) != gen.dim:
            raise QueryDimensionError(
                f"the query vector has {len(vector)} dimensions, the serving model {gen.label} makes {gen.dim}"
            )
        if row_level_security and where.tenant is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(TENANT_ROLE)))
            conn.execute("SELECT set_config('ragline.tenant', %s, true)", (where.tenant,))
        index_type = generations.index_type(conn, gen.id)
        exact = settings.exact == "always" or index_type is None
        if settings.exact == "auto" and not exact:
            exact = _rows_below(conn, gen.id, settings.exact_below)
        if exact:
            distance: sql.Composable = sql.SQL("c.embedding <=> %(q)s")
        else:
            cast = sql.SQL("{}({})").format(sql.SQL(index_type or "vector"), sql.Literal(gen.dim))
            distance = sql.SQL("c.embedding::{cast} <=> %(q)s::{cast}").format(cast=cast)
            # HNSW returns at most ef_search rows; iterative scans keep filtered queries from coming back short.
            conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(settings.ef_search, n))))
            conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        queries = _queries(gen.id, distance)

        def ids(name: str) -> list[uuid.UUID]:
            return [r["id"] for r in conn.execute(queries[name], params).fetchall()]

        by_vector = ids("vector")
        phrase: list[uuid.UUID] = []
        if hybrid:
            phrase = ids("phrase")
            by_words = _unique(phrase, ids("all_words"))
            if len(by_words) < k:
                by_words = _unique(by_words, ids("any_words"))
            fused = fuse([by_vector, by_words], n, settings.rrf_k)
            ranked = [(c, 1.0 + 1.0 / (settings.rrf_k + i)) for i, c in enumerate(phrase, start=1)]
            first = set(phrase)
            ranked += [(c, score) for c, score in fused if c not in first]
            ranked = ranked[:k]
        else:
            ranked = [(c, 0.0) for c in by_vector[:k]]
        rows = {r["id"]: r for r in conn.execute(_HITS_SQL, {**params, "ids": [c for c, _ in ranked]}).fetchall()}
    hits: list[SearchHit] = []
    for chunk, rank_score in ranked:
        r = rows.get(chunk)
        if r is None:  # deleted between the two statements
            continue
        similarity = 1.0 - float(r["distance"])
        hits.append(
            SearchHit(
                score=rank_score if hybrid else similarity,
                similarity=similarity,
                text=r["text"],
                source=r["source"],
                uri=r["uri"],
                title=r["title"],
                page=r["page"],
                chunk_index=r["chunk_index"],
                document_id=r["document_id"],
            )
        )
    if not hybrid:  # iterative HNSW scans in relaxed order (and halfvec graphs) may order rows slightly off
        hits.sort(key=lambda h: -h.similarity)
    return hits


def _rows_below(conn: Connection, model_id: int, limit: int) -> bool:
    """Whether the generation holds fewer than ``limit`` chunks: the planner's estimate of the table when
    there is one (free), else a count that reads at most ``limit`` rows."""
    if limit <= 0:
        return False
    estimate = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'chunks'::regclass").fetchone()
    if estimate and estimate["reltuples"] >= 0:  # the table's size as of its last analyze (all generations)
        return float(estimate["reltuples"]) < limit
    row = conn.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM chunks WHERE model_id = %s LIMIT %s) s", (model_id, limit)
    ).fetchone()
    return row is not None and int(row["n"]) < limit
