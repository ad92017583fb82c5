"""Pure ledger rules and id derivation, as tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from vectorstore.ids import chunk_id
from vectorstore.ledger import Decision, Fingerprints, LedgerEntry, decide

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
