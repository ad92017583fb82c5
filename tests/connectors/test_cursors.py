"""Typed cursors of the remote connectors: the JSON saved in Postgres today reads and writes back unchanged
(so saved syncs keep resuming), and a malformed one fails naming the source and the field."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.confluence_cursor import ConfluenceCursor, pack_ids
from connectors.errors import CursorError
from connectors.hubspot import HubSpotCursor
from connectors.mediawiki import MediaWikiCursor
from connectors.salesforce import SalesforceCursor

Cursor = type[MediaWikiCursor] | type[HubSpotCursor] | type[SalesforceCursor] | type[ConfluenceCursor]

KNOWN = pack_ids(["98001", "98002", "98003"])
TODAY: list[tuple[Cursor, dict[str, Any]]] = [
    (MediaWikiCursor, {"mode": "full", "since": "2026-01-01T00:00:25Z", "ns": 0, "continue": {"gapcontinue": "B"}}),
    (MediaWikiCursor, {"mode": "full", "since": "2026-01-01T00:00:25Z", "ns": 4, "continue": {}}),
    (MediaWikiCursor, {"mode": "incremental", "since": "2026-01-01T00:00:25Z", "continue": {"rccontinue": "5"}}),
    (HubSpotCursor, {"companies": {"since": 1_700_000_030_000, "after": "20", "query_since": 0}}),
    (
        HubSpotCursor,
        {
            "companies": {"since": 1_700_000_075_000, "after": None, "archived_since": 1_700_000_079_000},
            "contacts": {"since": 1_700_000_076_000, "after": None, "archived_since": 0},
        },
    ),
    (SalesforceCursor, {"Account": {"since": "2026-01-01T00:00:30Z", "next": "/services/data/v60.0/query/01g-10"}}),
    (
        SalesforceCursor,
        {"Account": {"since": None, "next": None}, "Case": {"since": "2026-01-01T00:00:05Z", "next": None}},
    ),
    (
        ConfluenceCursor,
        {
            "mode": "full",
            "since": "2026-03-02T08:13:48+00:00",
            "space": "OPS",
            "next": "/wiki/api/v2/spaces/1001/pages?cursor=abc",
            "seen": pack_ids(["98001", "98002"]),
            "known": KNOWN,
            "reconciled_at": "2026-03-02T09:00:00+00:00",
        },
    ),
    (
        ConfluenceCursor,
        {
            "mode": "incremental",
            "since": "2026-03-02T08:13:48+00:00",
            "latest": "2026-03-02T08:20:00+00:00",
            "next": None,
            "phase": "removed",
            "known": KNOWN,
            "reconciled_at": "2026-03-02T09:00:00+00:00",
        },
    ),
]


@pytest.mark.parametrize(("cursor", "saved"), TODAY)
def test_a_cursor_saved_today_round_trips(cursor: Cursor, saved: dict[str, Any]) -> None:
    assert cursor.from_json(saved).to_json() == saved


@pytest.mark.parametrize("cursor", [MediaWikiCursor, HubSpotCursor, SalesforceCursor, ConfluenceCursor])
def test_no_saved_cursor_is_the_start(cursor: Cursor) -> None:
    assert cursor.from_json(None) == cursor.from_json({}) == cursor()


def test_a_first_listing_without_known_pages_reads_as_none_known() -> None:
    saved = {"mode": "full", "since": "2026-03-02T08:13:48+00:00", "known": "", "seen": pack_ids([])}
    position = ConfluenceCursor.from_json(saved)
    assert position.known == frozenset() and position.seen == frozenset()
    assert ConfluenceCursor.from_json(position.to_json()) == position


@pytest.mark.parametrize(
    ("cursor", "saved", "field"),
    [
        (MediaWikiCursor, {"mode": "sideways"}, "mode"),
        (MediaWikiCursor, {"mode": "incremental", "continue": {}}, "since"),
        (MediaWikiCursor, {"mode": "full", "ns": "main"}, "ns"),
        (MediaWikiCursor, {"mode": "full", "continue": ["gapcontinue"]}, "continue"),
        (HubSpotCursor, {"companies": 17}, "companies"),
        (HubSpotCursor, {"companies": {"since": "yesterday"}}, "companies.since"),
        (HubSpotCursor, {"companies": {"since": 0, "after": 20}}, "companies.after"),
        (SalesforceCursor, {"Account": {"since": "2026-01-01 00:00"}}, "Account.since"),
        (SalesforceCursor, {"Account": {"next": "https://elsewhere.example/x"}}, "Account.next"),
        (ConfluenceCursor, {"mode": "full", "known": "not packed!"}, "known"),
        (ConfluenceCursor, {"mode": "incremental", "since": "last week"}, "since"),
        (ConfluenceCursor, {"mode": "incremental", "phase": "added"}, "phase"),
    ],
)
def test_a_malformed_cursor_names_the_source_and_the_field(cursor: Cursor, saved: Any, field: str) -> None:
    with pytest.raises(CursorError, match=rf"^src: saved cursor: {field}: ") as err:
        cursor.from_json(saved, source="src")
    assert err.value.field == field


def test_a_cursor_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(CursorError, match="src: saved cursor: cursor: expected an object, found list"):
        MediaWikiCursor.from_json(["full"], source="src")  # type: ignore[arg-type]
