"""Chunk writes and search.

A document version is committed in one transaction: its ledger row locked, chunks no longer produced
removed, new chunks written with binary COPY, and the ledger row marked committed. A crash anywhere rolls
the whole version back; a replay derives the same ids and writes the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from vectorstore import generations, ledger
from vectorstore.db import Connection
from vectorstore.generations import Generation
from vectorstore.ledger import DocumentVersion
from vectorstore.migrations import full_text_present
from vectorstore.settings import SearchSettings


@dataclass(frozen=True)
class ChunkRow:
    id: uuid.UUID
    chunk_index: int
    page: int | None
    text: str
    token_count: int
    metadata: dict[str, Any] = field(default_factory=dict)


class StaleChunksError(RuntimeError):
    """Chunks assumed present (so not embedded) vanished before the commit: embed them and try again."""

    def __init__(self, external_ids: Sequence[str]) -> None:
        super().__init__(f"chunks of {', '.join(external_ids)} changed during the run")
        self.external_ids = list(external_ids)


@dataclass(frozen=True)
class DocumentCommit:
    """One document version to commit with all of its chunks (those already stored keep their rows)."""

    doc: DocumentVersion
    chunks: Sequence[ChunkRow]


@dataclass(frozen=True)
class Committed:
    document_id: int
    written: int
    """Chunks written; the rest of the version's chunks were already stored under the same ids."""


_COPY_CHUNKS = sql.SQL(
    "COPY chunks (id, document_id, chunk_index, page, text, token_count, model_id, embedding, metadata, tenant) "
    "FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "int8", "int4", "int4", "text", "int4", "int4", "vector", "jsonb", "text"]


def existing_chunk_ids(conn: Connection, source_id: int, external_id: str) -> set[uuid.UUID]:
    """Chunks a document already has: those need no model work when the document is re-committed."""
    rows = conn.execute(
        """
        SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id
        WHERE d.source_id = %s AND d.external_id = %s
        """,
        (source_id, external_id),
    ).fetchall()
    conn.commit()
    return {r["id"] for r in rows}


def commit_document(
    conn: Connection,
    source_id: int,
    doc: DocumentVersion,
    chunks: Sequence[ChunkRow],
    vectors: dict[uuid.UUID, np.ndarray],
    model_id: int,
) -> int:
    """Replace the chunks of ``doc`` with ``chunks`` and mark it committed, atomically; returns its id.

    ``vectors`` holds embeddings of the chunks that are not stored yet; a chunk already stored under the same
    (content-derived) id keeps its row and vector.
    """
    return commit_documents(conn, source_id, [DocumentCommit(doc, chunks)], vectors, model_id)[0].document_id


def commit_documents(
    conn: Connection,
    source_id: int,
    items: Sequence[DocumentCommit],
    vectors: dict[uuid.UUID, np.ndarray],
    model_id: int,
) -> list[Committed]:
    """Commit several document versions in one transaction (a group commit); results in the order of ``items``.

    Each version is still whole or absent, never half there: its ledger row, the removal of the chunks it no
    longer has and the COPY of its new ones commit together. A batch pays one commit, one COPY and three
    other round trips (the ledger rows pipelined) instead of six round trips and a WAL flush per document (a
    bulk load of small documents ran ~2x faster: docs/benchmarks.md). A crash or an error rolls the whole
    batch back; callers that must isolate one bad document commit the batch again one document at a time.
    """
    if not items:
        return []
    names = [i.doc.external_id for i in items]
    if len(set(names)) != len(names):
        raise ValueError("a batch holds the same document twice")
    # Ledger rows are locked in external-id order (code point order, as ``ledger.mark_deleted`` locks them
    # with COLLATE "C"): two writers never wait on each other in a cycle.
    ordered = sorted(items, key=lambda i: i.doc.external_id)
    with conn.transaction():
        written = ledger.commit_versions(conn, source_id, [(i.doc, len(i.chunks)) for i in ordered])
        ids = [doc_id for doc_id, _ in written]
        # Only this model's rows (and leftovers of retired generations) are replaced: while a new generation
        # is built, the serving generation keeps these documents' previous vectors until the switch. Chunk
        # ids derive from the source and document, so one list of ids to keep serves the whole batch.
        conn.execute(
            """
            DELETE FROM chunks WHERE document_id = ANY(%s) AND NOT (id = ANY(%s))
              AND (model_id = %s OR model_id IN (SELECT id FROM models WHERE state = 'retired'))
            """,
            (ids, [c.id for i in ordered for c in i.chunks], model_id),
        )
        present = {
            r["id"]
            for r in conn.execute(
                "SELECT id FROM chunks WHERE document_id = ANY(%s) AND model_id = %s", (ids, model_id)
            )
        }
        missing = [[c for c in i.chunks if c.id not in present] for i in ordered]
        stale = [
            i.doc.external_id for i, m in zip(ordered, missing, strict=True) if any(c.id not in vectors for c in m)
        ]
        if stale:
            raise StaleChunksError(stale)  # rolls the ledger rows back too
        _copy_chunks(
            conn,
            [(doc_id, tenant, c) for (doc_id, tenant), m in zip(written, missing, strict=True) for c in m],
            vectors,
            model_id,
        )
    by_name = {i.doc.external_id: Committed(doc_id, len(m)) for doc_id, i, m in zip(ids, ordered, missing, strict=True)}
    return [by_name[name] for name in names]


def _copy_chunks(
    conn: Connection,
    rows: Sequence[tuple[int, str, ChunkRow]],
    vectors: dict[uuid.UUID, np.ndarray],
    model_id: int,
) -> None:
    """Binary COPY of (document id, tenant, chunk) rows."""
    if not rows:
        return
    with conn.cursor().copy(_COPY_CHUNKS) as copy:
        copy.set_types(_COPY_TYPES)
        for document_id, tenant, c in rows:
            copy.write_row(
                (
                    c.id,
                    document_id,
                    c.chunk_index,
                    c.page,
                    c.text,
                    c.token_count,
                    model_id,
                    vectors[c.id],
                    Jsonb(c.metadata),
                    tenant,
                )
            )


@dataclass(frozen=True)
class StoredChunk:
    chunk_index: int
    page: int | None
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class GenerationWork:
    """A document whose chunks the target generation lacks, with what is needed to embed them again."""

    document_id: int
    source: str
    external_id: str
    status: str
    chunks: list[StoredChunk]


def generation_work(conn: Connection, document_ids: Sequence[int], serving_model_id: int) -> list[GenerationWork]:
    """The serving generation's chunks of ``document_ids``: a re-embed works from stored text (a remote
    source's records are not fetched again)."""
    docs = conn.execute(
        """
        SELECT d.id, d.external_id, d.status, s.name AS source FROM documents d JOIN sources s ON s.id = d.source_id
        WHERE d.id = ANY(%s) ORDER BY d.id
        """,
        (list(document_ids),),
    ).fetchall()
    rows = conn.execute(
        """
        SELECT document_id, chunk_index, page, text, metadata FROM chunks
        WHERE document_id = ANY(%s) AND model_id = %s ORDER BY document_id, chunk_index
        """,
        (list(document_ids), serving_model_id),
    ).fetchall()
    conn.commit()
    by_doc: dict[int, list[StoredChunk]] = {}
    for r in rows:
        by_doc.setdefault(r["document_id"], []).append(
            StoredChunk(chunk_index=r["chunk_index"], page=r["page"], text=r["text"], metadata=r["metadata"])
        )
    return [GenerationWork(d["id"], d["source"], d["external_id"], d["status"], by_doc.get(d["id"], [])) for d in docs]


def add_generation_chunks(
    conn: Connection,
    document_id: int,
    rows: Sequence[ChunkRow],
    vectors: dict[uuid.UUID, np.ndarray],
    model_id: int,
    fingerprint: str | None,
) -> bool:
    """Give a document its chunks in the generation being built, atomically, unless it got them meanwhile
    (a run with the new model committed it). A committed document takes ``fingerprint`` (so the next run sees
    it as done); a quarantined one stays quarantined. Returns whether anything was written."""
    with conn.transaction():
        doc = conn.execute("SELECT status, tenant FROM documents WHERE id = %s FOR UPDATE", (document_id,)).fetchone()
        if doc is None or doc["status"] == "deleted":
            return False
        done = conn.execute(
            "SELECT 1 FROM chunks WHERE document_id = %s AND model_id = %s LIMIT 1", (document_id, model_id)
        ).fetchone()
        if done:
            return False
        _copy_chunks(conn, [(document_id, doc["tenant"], c) for c in rows], vectors, model_id)
        if doc["status"] == "committed" and fingerprint is not None:
            conn.execute("UPDATE documents SET fingerprint = %s WHERE id = %s", (fingerprint, document_id))
    return True


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


def status(conn: Connection) -> dict[str, Any]:
    """Counts for ``ragline status``: totals and, per source, documents, chunks, cursor and last run."""
    totals = conn.execute(
        """
        SELECT
            (SELECT count(*) FROM documents WHERE status <> 'deleted') AS documents,
            (SELECT count(*) FROM chunks) AS chunks,
            (SELECT count(*) FROM documents WHERE status = 'quarantined') AS quarantined
        """
    ).fetchone()
    assert totals is not None
    sources = conn.execute(
        """
        SELECT s.name, s.kind, s.cursor,
            (SELECT count(*) FROM documents d WHERE d.source_id = s.id AND d.status <> 'deleted') AS documents,
            (SELECT count(*) FROM documents d WHERE d.source_id = s.id AND d.status = 'quarantined')
                AS quarantined,
            (SELECT coalesce(sum(d.chunk_count), 0) FROM documents d WHERE d.source_id = s.id) AS chunks,
            (SELECT json_build_object('id', r.id, 'status', r.status, 'started_at', r.started_at,
                                      'finished_at', r.finished_at, 'counts', r.counts, 'error', r.error)
             FROM runs r WHERE r.source_id = s.id ORDER BY r.started_at DESC, r.id DESC LIMIT 1) AS last_run
        FROM sources s ORDER BY s.name
        """
    ).fetchall()
    gens = generations.overview(conn)
    conn.commit()
    return {
        "documents": int(totals["documents"]),
        "chunks": int(totals["chunks"]),
        "quarantined": int(totals["quarantined"]),
        "sources": {
            s["name"]: {
                "kind": s["kind"],
                "documents": int(s["documents"]),
                "chunks": int(s["chunks"]),
                "quarantined": int(s["quarantined"]),
                "cursor": s["cursor"],
                "last_run": s["last_run"],
            }
            for s in sources
        },
        "models": [
            {k: g[k] for k in ("name", "revision", "dim", "normalized", "chunks", "state")} for g in gens if g["chunks"]
        ],
        "generations": [
            {**{k: v for k, v in g.items() if k != "state_changed_at"}, "since": g["state_changed_at"].isoformat()}
            for g in gens
        ],
    }
