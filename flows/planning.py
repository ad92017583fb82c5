"""What a run of a source has to do: its documents compared with the ledger. Pure decisions on top of one
ledger read; nothing is parsed or embedded here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from connectors.base import SourceDocument
from embedding.model import TextEmbedder
from flows.counts import Counts
from flows.settings import RaglineSettings
from vectorstore import ledger, tenancy
from vectorstore.db import Connection
from vectorstore.ledger import Decision, Fingerprints, LedgerEntry


@dataclass(frozen=True)
class SourceRef:
    """A source as a run knows it: its ledger id, resolved once at the start of the run, its name and kind,
    and the tenant it belongs to (what its metrics are labelled with)."""

    id: int
    name: str
    kind: str
    tenant: str = "default"


def resolve_source(
    conn: Connection, settings: RaglineSettings, name: str, kind: str, *, tenant: str | None = None
) -> SourceRef:
    """The ledger row of source ``name`` (created on first use), with the tenant its configuration names, else
    ``tenant`` (an unconfigured source a tenant's token ingests into)."""
    configured = next((s.tenant for s in settings.sources if s.name == name), None)
    source_id = ledger.ensure_source(conn, name, kind, configured or tenant)
    recorded = configured or tenant or tenancy.source_tenant(conn, name)
    return SourceRef(source_id, name, kind, recorded or "default")


@dataclass
class Plan:
    """What a run has to do: documents to (re)process, ledger ids to delete, held deletions of documents seen
    again (``reappeared``: no longer to delete), and what it can skip."""

    work: list[SourceDocument] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    reappeared: list[int] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    planned_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def pipeline_fingerprints(settings: RaglineSettings, embedder: TextEmbedder) -> Fingerprints:
    """A change of chunking, model or PDF text extractor re-processes committed documents (chunks whose text is
    unchanged keep their vectors: their ids do not change); a change of parse settings (passwords, limits)
    only retries quarantined ones. The fingerprint is one for all sources, so a change of extractor re-reads
    non-PDF documents too (their chunks and vectors are all kept)."""

    def digest(parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    committed = digest(
        {
            "chunking": settings.embedding.chunking.model_dump(),
            "model": [embedder.settings.model, embedder.revision],
            "pdf_extractor": settings.pdf.extractor,
        }
    )
    return Fingerprints(committed=committed, quarantined=digest([committed, settings.pdf.fingerprint()]))


def known_hash(doc: SourceDocument, entry: LedgerEntry | None, *, trust_stat_keys: bool = True) -> str | None:
    """The document's content hash without reading it: its own, or, for a document read only on demand, the
    ledger's when its stat key still matches. None: it must be read to be judged."""
    if doc.read is None:
        return doc.content_hash
    if trust_stat_keys and entry is not None and doc.stat_key is not None and entry.stat_key == doc.stat_key:
        return entry.content_hash
    return None


def count_decision(counts: Counts, decision: Decision) -> None:
    if decision is Decision.NEW:
        counts.new += 1
    elif decision is Decision.CHANGED:
        counts.changed += 1
    elif decision is Decision.RETRY:
        counts.retried += 1
    elif decision is Decision.UNCHANGED:
        counts.unchanged += 1
    else:
        counts.still_quarantined += 1


def plan(
    conn: Connection,
    source_id: int,
    documents: Iterable[SourceDocument],
    fingerprints: Fingerprints,
    covers: Callable[[str], bool],
    *,
    only: list[str] | None = None,
    trust_stat_keys: bool = True,
) -> Plan:
    """Compare what the source has with the ledger. ``covers(external_id)`` tells whether the source was
    listed completely where that document lived, i.e. whether its absence means it was deleted.

    Unchanged and still-quarantined documents are counted here; the documents to work on are counted when the
    pipeline claims them and decides again (new, changed, retried), since a concurrent run may have done them
    meanwhile and a document read on demand is only judged once read."""
    now = ledger.now(conn)
    known = ledger.entries(conn, source_id, only)
    result = Plan(planned_at=now)
    seen: set[str] = set()
    for doc in documents:
        seen.add(doc.external_id)
        result.counts.seen += 1
        entry = known.get(doc.external_id)
        if entry is not None and entry.delete_held_at is not None:
            result.reappeared.append(entry.id)
        content_hash = known_hash(doc, entry, trust_stat_keys=trust_stat_keys)
        if content_hash is None:
            result.work.append(doc)
            continue
        decision = ledger.decide(entry, content_hash, fingerprints, now)
        if decision in (Decision.UNCHANGED, Decision.QUARANTINED):
            count_decision(result.counts, decision)
        else:
            result.work.append(doc)
    result.deleted = [
        entry.id
        for external_id, entry in known.items()
        if entry.status != "deleted" and external_id not in seen and covers(external_id)
    ]
    return result
