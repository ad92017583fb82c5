"""Pure ledger rules and id derivation, as tables; held deletions against the real store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from vectorstore import ledger
from vectorstore.db import Connection
from vectorstore.ids import chunk_id
from vectorstore.ledger import Decision, DocumentVersion, Fingerprints, LedgerEntry, PendingDeletions, decide

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def entry(
    status: str, content_hash: str = "h1", fingerprint: str | None = "f1", retry_after: datetime | None = None
) -> LedgerEntry:
    return LedgerEntry(
        id=1,
        external_id="x",
        content_hash=content_hash,
        fingerprint=fingerprint,
        status=status,
        retry_after=retry_after,
    )


FP = Fingerprints(committed="c1", quarantined="q1")


@pytest.mark.parametrize(
    ("current", "content_hash", "fingerprints", "expected"),
    [
        (None, "h1", FP, Decision.NEW),
        (entry("deleted"), "h1", FP, Decision.NEW),
        (entry("committed", fingerprint="c1"), "h1", FP, Decision.UNCHANGED),
        (entry("committed", fingerprint="c1"), "h2", FP, Decision.CHANGED),
        (entry("committed", fingerprint="c1"), "h1", Fingerprints("c2", "q1"), Decision.CHANGED),
        # a new password (parse settings) does not touch committed documents
        (entry("committed", fingerprint="c1"), "h1", Fingerprints("c1", "q2"), Decision.UNCHANGED),
        (entry("quarantined", fingerprint="q1"), "h1", FP, Decision.QUARANTINED),
        (
            entry("quarantined", fingerprint="q1", retry_after=NOW + timedelta(minutes=5)),
            "h1",
            FP,
            Decision.QUARANTINED,
        ),
        (entry("quarantined", fingerprint="q1", retry_after=NOW - timedelta(seconds=1)), "h1", FP, Decision.RETRY),
        (entry("quarantined", fingerprint="q1"), "h2", FP, Decision.RETRY),
        (entry("quarantined", fingerprint="q1"), "h1", Fingerprints("c1", "q2"), Decision.RETRY),
        (entry("quarantined", fingerprint=None), "h1", FP, Decision.RETRY),  # released by an operator
    ],
)
def test_decide(current: LedgerEntry | None, content_hash: str, fingerprints: Fingerprints, expected: Decision) -> None:
    assert decide(current, content_hash, fingerprints, NOW) is expected


def test_chunk_id_is_stable_and_depends_on_every_part() -> None:
    base = ("pdf", "/a.pdf", 0, "some text", "model@1")
    first = chunk_id(*base)
    assert first == chunk_id(*base)
    assert isinstance(first, uuid.UUID)
    variants = [
        ("pdf2", "/a.pdf", 0, "some text", "model@1"),
        ("pdf", "/b.pdf", 0, "some text", "model@1"),
        ("pdf", "/a.pdf", 1, "some text", "model@1"),
        ("pdf", "/a.pdf", 0, "some text!", "model@1"),
        ("pdf", "/a.pdf", 0, "some text", "model@2"),
    ]
    assert len({chunk_id(*v) for v in variants} | {first}) == len(variants) + 1


def _commit(conn: Connection, source_id: int, *names: str, content: str = "v1") -> dict[str, int]:
    with conn.transaction():
        versions = [(DocumentVersion(n, f"file:///{n}", n, f"{n}-{content}", "fp"), 0) for n in names]
        return {n: i for n, (i, _) in zip(names, ledger.commit_versions(conn, source_id, versions), strict=True)}


def test_held_deletions_wait_and_only_documents_still_gone_are_deleted(conn: Connection) -> None:
    source_id = ledger.ensure_source(conn, "s", "pdf")
    ids = _commit(conn, source_id, "a", "b", "c", "d", "e")
    planned = ledger.now(conn)
    _commit(conn, source_id, "d", content="v2")  # committed again after the plan: not the plan's to hold
    assert ledger.hold_deletions(conn, [ids[n] for n in "abcd"], planned) == 3
    first = ledger.entries(conn, source_id)["a"].delete_held_at
    assert first is not None and all(e.status == "committed" for e in ledger.entries(conn, source_id).values())
    assert ledger.pending_deletions(conn, source_id) == PendingDeletions([ids["a"], ids["b"], ids["c"]], 5)

    assert ledger.hold_deletions(conn, [ids["a"]], ledger.now(conn)) == 1  # held again: keeps its first time
    assert ledger.entries(conn, source_id)["a"].delete_held_at == first
    assert ledger.release_held(conn, [ids["b"]]) == 1  # seen again, unchanged
    _commit(conn, source_id, "c", content="v3")  # seen again, changed
    assert ledger.pending_deletions(conn, source_id) == PendingDeletions([ids["a"]], 5)

    assert ledger.delete_held(conn, [ids["a"], ids["b"], ids["c"]]) == 1
    after = ledger.entries(conn, source_id)
    assert {n: (e.status, e.delete_held_at) for n, e in after.items()} == {
        "a": ("deleted", None),
        **{n: ("committed", None) for n in "bcde"},
    }
    assert ledger.pending_deletions(conn, source_id) == PendingDeletions([], 4)
