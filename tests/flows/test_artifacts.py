"""The artifact builders: keys Prefect accepts, counts and throughput an operator can read, progress updates
that stay few."""

from __future__ import annotations

import pytest
from prefect.types.names import raise_on_name_alphanumeric_dashes_only

from flows import artifacts, runs
from flows.artifacts import ProgressGate, counts_key, progress_key
from flows.counts import Counts


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("pdf", "ragline-counts-pdf"),
        ("wiki-2", "ragline-counts-wiki-2"),
        ("CRM EU", "ragline-counts-crm-eu-" + "0" * 8),  # digest checked below
        ("crm_eu", "ragline-counts-crm-eu-" + "0" * 8),
        ("Ω", "ragline-counts-" + "0" * 8),
        ("--a--", "ragline-counts-a-" + "0" * 8),
    ],
)
def test_counts_key_is_a_valid_prefect_key(source: str, key: str) -> None:
    made = counts_key(source)
    raise_on_name_alphanumeric_dashes_only(made, "key")
    raise_on_name_alphanumeric_dashes_only(progress_key(source), "key")
    if key.endswith("0" * 8):
        assert made.startswith(key[:-8]) and len(made) == len(key)
    else:
        assert made == key


def test_names_that_fold_to_the_same_letters_get_different_keys() -> None:
    names = ["crm-eu", "CRM EU", "crm_eu", "crm/eu", "Crm-Eu"]
    assert len({counts_key(n) for n in names}) == len(names)
    assert counts_key("CRM EU") == counts_key("CRM EU")
    assert counts_key("pdf") != progress_key("pdf")


def test_run_tags_name_the_source_and_kind() -> None:
    assert artifacts.run_tags("docs", "pdf") == ["ragline", "source:docs", "kind:pdf"]


@pytest.mark.parametrize(
    ("counts", "error", "outcome", "headline"),
    [
        (Counts(committed=3), None, "completed", "Completed"),
        (Counts(committed=3, still_quarantined=2), None, "completed", "Completed"),
        (Counts(quarantined=1), None, "completed_with_quarantine", "Completed with 1 quarantined document"),
        (Counts(quarantined=4), None, "completed_with_quarantine", "Completed with 4 quarantined documents"),
        (Counts(committed=5, quarantined=1), "HttpError: 503", "failed", "Failed"),
    ],
)
def test_outcome_and_headline(counts: Counts, error: str | None, outcome: str, headline: str) -> None:
    assert runs.outcome(counts, error) == outcome
    assert artifacts.headline(counts, error) == headline


def test_count_rows_cover_what_the_issue_asks_for() -> None:
    counts = Counts(
        seen=10,
        unchanged=4,
        new=3,
        changed=2,
        retried=1,
        still_quarantined=1,
        committed=5,
        quarantined=1,
        deleted=2,
        deletions_held=9,
        chunks_written=40,
        chunks_reused=7,
        embedded_tokens=8000,
        bytes_read=123456,
        http_requests=12,
        http_retries=3,
        throttled=2,
        done_elsewhere=6,
    )
    rows = dict(artifacts.count_rows(counts))
    assert rows == {
        "fetched": 10,
        "new": 3,
        "changed": 2,
        "skipped unchanged": 4,
        "done by another run": 6,
        "embedded documents": 5,
        "embedded chunks": 40,
        "reused chunks": 7,
        "embedded tokens": 8000,
        "bytes read": 123456,
        "deleted": 2,
        "deletions held": 9,
        "quarantined": 1,
        "still quarantined (retry not due)": 1,
        "quarantined retried": 1,
        "HTTP requests": 12,
        "HTTP retries": 3,
        "throttled calls": 2,
    }
    # Every field of Counts is shown: a new count cannot be forgotten here silently.
    assert sorted(rows.values()) == sorted(counts.as_dict().values())


@pytest.mark.parametrize(
    ("counts", "seconds", "docs", "chunks", "tokens"),
    [
        (Counts(committed=8, quarantined=2, chunks_written=50, embedded_tokens=9000), 5.0, 2.0, 10.0, 1800.0),
        (Counts(unchanged=100), 2.0, 0.0, 0.0, 0.0),
        (Counts(committed=1), 0.0, None, None, None),
    ],
)
def test_throughput(
    counts: Counts, seconds: float, docs: float | None, chunks: float | None, tokens: float | None
) -> None:
    rate = artifacts.throughput(counts, seconds)
    assert (rate.seconds, rate.documents_per_second, rate.chunks_per_second, rate.tokens_per_second) == (
        seconds,
        docs,
        chunks,
        tokens,
    )


def test_counts_markdown_of_a_run_with_quarantine() -> None:
    counts = Counts(seen=3, new=3, committed=2, quarantined=1, chunks_written=6, embedded_tokens=1200)
    text = artifacts.counts_markdown("docs", "pdf", counts, 4.0)
    lines = text.splitlines()
    assert lines[0] == "## Completed with 1 quarantined document"
    assert "Source **docs** (pdf), 4.0 s: 0.75 documents/s, 1.50 chunks/s, 300 tokens/s" in lines
    assert "| fetched | 3 |" in lines and "| embedded chunks | 6 |" in lines and "| quarantined | 1 |" in lines
    assert "ragline quarantine list" in text
    assert "Error" not in text


def test_counts_markdown_of_a_failed_run_shows_the_error_as_text() -> None:
    error = "HttpError: 503 from https://wiki/api.php | see *logs*\nTraceback (most recent call last): ..."
    text = artifacts.counts_markdown("wiki|prod", "mediawiki", Counts(seen=5, committed=5), 0.0, error)
    lines = text.splitlines()
    assert lines[0] == "## Failed"
    assert "Source **wiki\\|prod** (mediawiki), 0.0 s: - documents/s, - chunks/s, - tokens/s" in lines
    assert "**Error:** HttpError: 503 from https://wiki/api.php \\| see \\*logs\\*" in lines
    assert "Traceback" not in text
    assert "| embedded documents | 5 |" in lines
    assert artifacts.counts_description("wiki", Counts(), error) == "ragline ingest of wiki: failed"


def test_counts_markdown_of_a_run_whose_deletions_were_held() -> None:
    error = "DeletionsHeld: source 'docs': 5 of its 5 documents (100%) are gone; confirm with --allow-mass-delete"
    text = artifacts.counts_markdown("docs", "pdf", Counts(seen=0, deletions_held=5), 1.0, error)
    lines = text.splitlines()
    assert lines[0] == "## Failed" and "| deletions held | 5 |" in lines and "| deleted | 0 |" in lines
    assert "5 deletions held by the mass-delete guard: their chunks stay" in lines
    assert any("--allow-mass-delete" in line and line.startswith("**Error:**") for line in lines)


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        ("", "unknown error"),
        ("  ValueError: bad\nmore", "ValueError: bad"),
        ("x" * 600, "x" * 497 + "..."),
    ],
)
def test_short_error(error: str, shown: str) -> None:
    assert artifacts.short_error(error) == shown


def test_progress_gate_publishes_few_updates_and_always_the_last() -> None:
    now = [0.0]
    gate = ProgressGate(total=1000, interval=2000.0, clock=lambda: now[0])  # a clock in milliseconds
    published: list[tuple[float, float]] = []
    for i in range(1000):
        now[0] = i * 10.0  # ten seconds in all
        percent = gate.advance("quarantined" if i % 100 == 0 else "committed")
        if percent is not None:
            published.append((now[0], percent))
    assert published == [(90.0, 1.0), (2090.0, 21.0), (4090.0, 41.0), (6090.0, 61.0), (8090.0, 81.0), (9990.0, 100.0)]
    assert gate.description() == "1000 of 1000 documents processed, 10 quarantined"
    assert gate.advance("committed") is None  # a stray event after the end sends nothing


def test_progress_gate_waits_for_a_whole_percent() -> None:
    gate = ProgressGate(total=1000, interval=0.0, clock=lambda: 0.0)
    assert [gate.advance("committed") for _ in range(25)].count(None) == 23  # 1% and 2% only
    one = ProgressGate(total=1, clock=lambda: 0.0)
    assert one.advance("committed") == 100.0
    assert one.description() == "1 of 1 document processed"
