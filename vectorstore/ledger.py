"""The document ledger: one row per source document, its latest version, status and errors.

The ledger is what makes runs resumable and idempotent: a document is skipped when its content hash and the
pipeline fingerprint are those already committed, and quarantined documents wait for a fix (new content or
settings), an operator's retry, or their ``retry_after`` for failures that may pass by themselves.

One table's statements, some 410 lines of them: the decision table, versions, quarantine, stat keys and held
deletions all read or write the same rows under the same locking rules, so they stay together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb

from vectorstore.db import Connection


class SourceKindMismatchError(ValueError):
    pass


class Decision(StrEnum):
    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    QUARANTINED = "quarantined"  # still quarantined, nothing new to try
    RETRY = "retry"  # quarantined, but something changed or its retry time came


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    external_id: str
    content_hash: str
    fingerprint: str | None
    status: str
    retry_after: datetime | None
    stat_key: str | None = None
    updated_at: datetime | None = None
    delete_held_at: datetime | None = None
    """Set while the mass-delete guard holds this document's deletion (it seemed gone from its source)."""


@dataclass(frozen=True)
class DocumentVersion:
    """What the ledger records about one version of a document."""

    external_id: str
    uri: str
    title: str | None
    content_hash: str
    fingerprint: str
    source_modified_at: datetime | None = None
    page_count: int | None = None
    metadata: dict[str, Any] | None = None
    stat_key: str | None = None


@dataclass(frozen=True)
class Fingerprints:
    """``committed``: the settings that shape a document's chunks (chunking, model), compared for committed
    documents; ``quarantined``: those plus the settings that can turn a failure into a success (passwords,
    limits), compared for quarantined documents, so a new password does not re-process the whole corpus."""

    committed: str
    quarantined: str


def decide(entry: LedgerEntry | None, content_hash: str, fingerprints: Fingerprints, now: datetime) -> Decision:
    """What to do with a document seen at the source. Pure, so the rules are tested as a table."""
    if entry is None or entry.status == "deleted":
        return Decision.NEW
    if entry.status == "committed":
        same = entry.content_hash == content_hash and entry.fingerprint == fingerprints.committed
        return Decision.UNCHANGED if same else Decision.CHANGED
    same = entry.content_hash == content_hash and entry.fingerprint == fingerprints.quarantined
    if not same or (entry.retry_after is not None and entry.retry_after <= now):
        return Decision.RETRY
    return Decision.QUARANTINED


def ensure_source(conn: Connection, name: str, kind: str, tenant: str | None = None) -> int:
    """The id of source ``name``, created on first use. A ``tenant`` that differs from the recorded one moves
    the source with its documents and chunks to that tenant (None: keep what is recorded)."""
    with conn.transaction():
        row = conn.execute(
            """
            INSERT INTO sources (name, kind, tenant) VALUES (%s, %s, coalesce(%s, 'default'))
            ON CONFLICT (name) DO UPDATE SET updated_at = sources.updated_at
            RETURNING id, kind, tenant
            """,
            (name, kind, tenant),
        ).fetchone()
        assert row is not None
        if row["kind"] != kind:
            raise SourceKindMismatchError(f"source {name!r} is a {row['kind']} source, not {kind}")
        if tenant is not None and row["tenant"] != tenant:
            source_id = row["id"]
            conn.execute("UPDATE sources SET tenant = %s, updated_at = now() WHERE id = %s", (tenant, source_id))
            conn.execute("UPDATE documents SET tenant = %s WHERE source_id = %s", (tenant, source_id))
            conn.execute(
                "UPDATE chunks SET tenant = %s WHERE document_id IN (SELECT id FROM documents WHERE source_id = %s)",
                (tenant, source_id),
            )
    return int(row["id"])


def entries(conn: Connection, source_id: int, external_ids: list[str] | None = None) -> dict[str, LedgerEntry]:
    """Ledger rows of a source, or only of ``external_ids`` (a batch of a remote source)."""
    rows = conn.execute(
        """
        SELECT id, external_id, content_hash, fingerprint, status, retry_after, stat_key, updated_at, delete_held_at
        FROM documents WHERE source_id = %s AND (%s::text[] IS NULL OR external_id = ANY(%s))
        """,
        (source_id, external_ids, external_ids),
    ).fetchall()
    conn.commit()
    return {r["external_id"]: LedgerEntry(**r) for r in rows}


_UPSERT_VERSION = """
INSERT INTO documents (source_id, external_id, uri, title, content_hash, fingerprint, status,
                       source_modified_at, page_count, metadata, tenant)
VALUES (%s, %s, %s, %s, %s, %s, 'quarantined', %s, %s, %s, (SELECT tenant FROM sources WHERE id = %s))
ON CONFLICT (source_id, external_id) DO UPDATE SET updated_at = now()
RETURNING id
"""

_COMMIT_VERSION = """
INSERT INTO documents (source_id, external_id, uri, title, content_hash, committed_hash, fingerprint, status,
                       chunk_count, page_count, metadata, source_modified_at, stat_key, tenant, committed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, 'committed', %s, %s, %s, %s, %s, (SELECT tenant FROM sources WHERE id = %s),
        now())
ON CONFLICT (source_id, external_id) DO UPDATE SET
    uri = EXCLUDED.uri, title = EXCLUDED.title, content_hash = EXCLUDED.content_hash,
    committed_hash = EXCLUDED.committed_hash, fingerprint = EXCLUDED.fingerprint, status = 'committed',
    attempts = 0, error_reason = NULL, last_error = NULL, retry_after = NULL, chunk_count = EXCLUDED.chunk_count,
    page_count = EXCLUDED.page_count, metadata = EXCLUDED.metadata,
    source_modified_at = EXCLUDED.source_modified_at, stat_key = EXCLUDED.stat_key, updated_at = now(),
    committed_at = now(), delete_held_at = NULL
RETURNING id, tenant
"""


def _version_params(source_id: int, doc: DocumentVersion) -> tuple[Any, ...]:
    return (
        source_id,
        doc.external_id,
        doc.uri,
        doc.title,
        doc.content_hash,
        doc.fingerprint,
        doc.source_modified_at,
        doc.page_count,
        Jsonb(doc.metadata or {}),
        source_id,
    )


def upsert_version(conn: Connection, source_id: int, doc: DocumentVersion) -> int:
    """Create or lock the ledger row of ``doc`` inside the caller's transaction; returns its id.

    The row lock serialises concurrent writers of one document: the second waits and then sees the first's
    chunks, so nothing is written twice.
    """
    row = conn.execute(_UPSERT_VERSION, _version_params(source_id, doc)).fetchone()
    assert row is not None
    return int(row["id"])


def commit_versions(
    conn: Connection, source_id: int, versions: Sequence[tuple[DocumentVersion, int]]
) -> list[tuple[int, str]]:
    """Write (version, chunk count) pairs as committed, locking their rows, inside the caller's transaction,
    which must write the chunks before it commits; returns (document id, tenant) in the order given.

    One pipelined round trip for the batch, one row version per document. Rows are locked in the order given:
    callers sort by external id (code point order) so two writers never wait on each other in a cycle.
    """
    if not versions:
        return []
    params = [
        (
            source_id,
            doc.external_id,
            doc.uri,
            doc.title,
            doc.content_hash,
            doc.content_hash,
            doc.fingerprint,
            chunk_count,
            doc.page_count,
            Jsonb(doc.metadata or {}),
            doc.source_modified_at,
            doc.stat_key,
            source_id,
        )
        for doc, chunk_count in versions
    ]
    out: list[tuple[int, str]] = []
    with conn.cursor() as cur:
        cur.executemany(_COMMIT_VERSION, params, returning=True)
        while True:
            row = cur.fetchone()
            assert row is not None
            out.append((int(row["id"]), str(row["tenant"])))
            if not cur.nextset():
                break
    return out


def quarantine(
    conn: Connection, source_id: int, doc: DocumentVersion, reason: str, message: str, *, retryable: bool
) -> int:
    """Record a failed version. Chunks of an earlier good version stay searchable; the attempt count grows
    while the same version keeps failing, and retryable failures get an exponential ``retry_after``."""
    with conn.transaction():
        document_id = upsert_version(conn, source_id, doc)
        conn.execute(
            """
            UPDATE documents SET
                attempts = CASE WHEN status = 'quarantined' AND content_hash = %(hash)s
                                THEN attempts + 1 ELSE 1 END,
                uri = %(uri)s, title = COALESCE(%(title)s, title), content_hash = %(hash)s,
                fingerprint = %(fp)s, status = 'quarantined', error_reason = %(reason)s,
                last_error = %(message)s, source_modified_at = %(modified)s, stat_key = %(stat_key)s,
                delete_held_at = NULL, updated_at = now()
            WHERE id = %(id)s
            """,
            {
                "hash": doc.content_hash,
                "uri": doc.uri,
                "title": doc.title,
                "fp": doc.fingerprint,
                "reason": reason,
                "message": message,
                "modified": doc.source_modified_at,
                "stat_key": doc.stat_key,
                "id": document_id,
            },
        )
        conn.execute(
            """
            UPDATE documents SET retry_after = CASE WHEN %s
                THEN now() + least(interval '1 minute' * power(2, least(attempts, 20)), interval '1 day')
                ELSE NULL END
            WHERE id = %s
            """,
            (retryable, document_id),
        )
    return document_id


def record_stat_key(
    conn: Connection, source_id: int, external_id: str, content_hash: str, stat_key: str | None
) -> None:
    """A document read again and found identical (a file touched, copied over, restored): its new stat key is
    recorded, so the next run trusts it without reading. Only while the hash is still the one read. It was
    seen, so a held deletion of it is dropped."""
    with conn.transaction():
        conn.execute(
            "UPDATE documents SET stat_key = %s, delete_held_at = NULL "
            "WHERE source_id = %s AND external_id = %s AND content_hash = %s",
            (stat_key, source_id, external_id, content_hash),
        )


def now(conn: Connection) -> datetime:
    """The database's clock: plans are compared with ``updated_at``, written by the database."""
    row = conn.execute("SELECT clock_timestamp() AS now").fetchone()
    conn.commit()
    assert row is not None
    value: datetime = row["now"]
    return value


def mark_deleted(conn: Connection, document_ids: list[int], planned_at: datetime) -> int:
    """Documents gone from their source lose their chunks; the ledger row stays for the audit trail.

    Rows are locked first and only those untouched since ``planned_at`` are deleted: a document committed
    again by a concurrent run after the plan was made (it reappeared) keeps its chunks. They are locked in
    the order group commits lock them (external id, code point order), so the two never deadlock.
    """
    if not document_ids:
        return 0
    with conn.transaction():
        rows = conn.execute(
            """
            SELECT id FROM documents
            WHERE id = ANY(%s) AND status <> 'deleted' AND updated_at <= %s
            ORDER BY source_id, external_id COLLATE "C" FOR UPDATE
            """,
            (document_ids, planned_at),
        ).fetchall()
        return _delete_locked(conn, [r["id"] for r in rows])


def _delete_locked(conn: Connection, locked: list[int]) -> int:
    """Delete the chunks of documents whose rows the caller's transaction has locked; mark them deleted."""
    if not locked:
        return 0
    conn.execute("DELETE FROM chunks WHERE document_id = ANY(%s)", (locked,))
    conn.execute(
        """
        UPDATE documents SET status = 'deleted', chunk_count = 0, committed_hash = NULL,
            retry_after = NULL, delete_held_at = NULL, updated_at = now()
        WHERE id = ANY(%s)
        """,
        (locked,),
    )
    return len(locked)


# -- deletions held by the mass-delete guard ------------------------------------------------------------------


def hold_deletions(conn: Connection, document_ids: list[int], planned_at: datetime) -> int:
    """Mark documents a run found gone as pending deletion; nothing is deleted yet. Only rows untouched since
    ``planned_at`` (the rule of ``mark_deleted``); ``updated_at`` is left alone, so the rule still holds when
    they are deleted later, and a row held already keeps the time it was first held. Returns rows marked."""
    if not document_ids:
        return 0
    with conn.transaction():
        marked = conn.execute(
            """
            UPDATE documents SET delete_held_at = coalesce(delete_held_at, now())
            WHERE id = ANY(%s) AND status <> 'deleted' AND updated_at <= %s
            """,
            (document_ids, planned_at),
        ).rowcount
    return marked


def release_held(conn: Connection, document_ids: list[int]) -> int:
    """Documents seen at their source again: their held deletion is dropped. Returns rows released."""
    if not document_ids:
        return 0
    with conn.transaction():
        released = conn.execute(
            "UPDATE documents SET delete_held_at = NULL WHERE id = ANY(%s) AND delete_held_at IS NOT NULL",
            (document_ids,),
        ).rowcount
    return released


@dataclass(frozen=True)
class PendingDeletions:
    """A source's held deletions and how many documents it has (not deleted, the held ones included)."""

    held: list[int]
    documents: int


def pending_deletions(conn: Connection, source_id: int) -> PendingDeletions:
    row = conn.execute(
        """
        SELECT count(*) FILTER (WHERE status <> 'deleted') AS documents,
               coalesce(array_agg(id ORDER BY id) FILTER (WHERE status <> 'deleted' AND delete_held_at IS NOT NULL),
                        '{}') AS held
        FROM documents WHERE source_id = %s
        """,
        (source_id,),
    ).fetchone()
    conn.commit()
    assert row is not None
    return PendingDeletions([int(i) for i in row["held"]], int(row["documents"]))


def delete_held(conn: Connection, document_ids: list[int]) -> int:
    """Apply held deletions: documents still held (not seen or committed since they were held, which drops
    the marker) lose their chunks. Locked in the order of ``mark_deleted``."""
    if not document_ids:
        return 0
    with conn.transaction():
        rows = conn.execute(
            """
            SELECT id FROM documents
            WHERE id = ANY(%s) AND status <> 'deleted' AND delete_held_at IS NOT NULL
            ORDER BY source_id, external_id COLLATE "C" FOR UPDATE
            """,
            (document_ids,),
        ).fetchall()
        return _delete_locked(conn, [r["id"] for r in rows])


def quarantined(conn: Connection, ids: list[int] | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT d.id, s.name AS source, s.kind, d.external_id, d.uri, d.error_reason AS reason,
               d.last_error AS error, d.attempts, d.retry_after, d.updated_at
        FROM documents d JOIN sources s ON s.id = d.source_id
        WHERE d.status = 'quarantined' AND (%(ids)s::bigint[] IS NULL OR d.id = ANY(%(ids)s))
        ORDER BY d.id
        """,
        {"ids": ids},
    ).fetchall()
    conn.commit()
    return rows


def release(conn: Connection, ids: list[int]) -> None:
    """Make quarantined documents due for another attempt at the next run of their source."""
    with conn.transaction():
        conn.execute(
            "UPDATE documents SET retry_after = now(), fingerprint = NULL WHERE status = 'quarantined' "
            "AND id = ANY(%s)",
            (ids,),
        )
