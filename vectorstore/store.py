"""Chunk writes, and the chunks a new model generation still lacks.

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

from vectorstore import baselines, ledger
from vectorstore.db import Connection
from vectorstore.ledger import DocumentVersion


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
    written_ids: frozenset[uuid.UUID]
    """Chunks written; the rest of the version's chunks were already stored under the same ids."""

    @property
    def written(self) -> int:
        return len(self.written_ids)


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
    by_name = {
        i.doc.external_id: Committed(doc_id, frozenset(c.id for c in m))
        for doc_id, i, m in zip(ids, ordered, missing, strict=True)
    }
    return [by_name[name] for name in names]


def _copy_chunks(
    conn: Connection,
    rows: Sequence[tuple[int, str, ChunkRow]],
    vectors: dict[uuid.UUID, np.ndarray],
    model_id: int,
) -> None:
    """Binary COPY of (document id, tenant, chunk) rows; refused while the generation's model canary is in
    mismatch (``baselines.ensure_writable``: every new vector is written here)."""
    if not rows:
        return
    baselines.ensure_writable(conn, model_id)
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
