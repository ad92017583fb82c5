"""HubSpot CRM v3: contacts, companies, deals, tickets and notes as documents.

Incremental through the search API, sorted ascending on the object's last-modified property with ``after``
paging. The search API stops at 10,000 results per query: before reaching it, the query restarts with
``GTE`` the last timestamp seen (records sharing that timestamp come again and are skipped as unchanged).
Deletions come from the archived-objects listing. Cursor (``HubSpotCursor``) per object: ``{"since": ms,
"after": str|None, "query_since": ms (while a restarted query pages), "archived_since": ms}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from pydantic import Field

from connectors.base import (
    Batch,
    DocumentError,
    Page,
    ParsedDocument,
    SourceDocument,
    SourceSettingsBase,
    failing_document,
)
from connectors.cursors import CursorReader, ObjectCursor
from connectors.errors import MalformedPayloadError
from connectors.http import HttpPolicy, HttpSource, ResilientClient
from connectors.text import clean_text
from connectors.values import parse_timestamp, secret_from_env

log = logging.getLogger(__name__)

SEARCH_CAP = 10_000
HubSpotObject = Literal["contacts", "companies", "deals", "tickets", "notes"]
ALL_OBJECTS: list[HubSpotObject] = ["contacts", "companies", "deals", "tickets", "notes"]

# Contacts keep their modification time in `lastmodifieddate`; the other objects in `hs_lastmodifieddate`.
MODIFIED_PROPERTY: dict[str, str] = {"contacts": "lastmodifieddate"}
DEFAULT_PROPERTIES: dict[str, list[str]] = {
    "contacts": ["firstname", "lastname", "email", "company", "jobtitle", "phone", "lifecyclestage"],
    "companies": ["name", "domain", "industry", "description", "city", "country"],
    "deals": ["dealname", "amount", "dealstage", "pipeline", "closedate", "description"],
    "tickets": ["subject", "content", "hs_pipeline_stage", "hs_ticket_priority"],
    "notes": ["hs_note_body", "hs_timestamp"],
}
TITLE_PROPERTIES: dict[str, list[str]] = {
    "contacts": ["firstname", "lastname"],
    "companies": ["name"],
    "deals": ["dealname"],
    "tickets": ["subject"],
    "notes": ["hs_note_body"],
}


class HubSpotSettings(SourceSettingsBase):
    kind: Literal["hubspot"] = "hubspot"
    base_url: str = Field(default="https://api.hubapi.com", description="API root (overridable for tests).")
    token_env: str = Field(default="HUBSPOT_TOKEN", description="Environment variable with the private app token.")
    objects: list[HubSpotObject] = Field(
        default_factory=lambda: list(ALL_OBJECTS),
        description="CRM objects to ingest.",
    )
    properties: dict[str, list[str]] = Field(
        default_factory=dict, description="Properties per object (defaults per object otherwise)."
    )
    page_size: int = Field(default=100, ge=1, le=200, description="Records per search request (max 200).")
    search_cap: int = Field(default=SEARCH_CAP, ge=1, description="Results the search API serves per query.")
    http: HttpPolicy = Field(default_factory=lambda: HttpPolicy(rate_per_second=4.0, burst=4))


def record_text(obj: str, properties: dict[str, Any], wanted: list[str]) -> tuple[str, str]:
    """(title, text) of a CRM record: its wanted properties as ``label: value`` lines. Timestamps of the
    record itself are left out, so a touch without a change does not re-embed it."""
    lines = []
    for key in wanted:
        value = properties.get(key)
        if value not in (None, ""):
            lines.append(f"{key}: {clean_text(str(value))}")
    title_parts = [str(properties.get(k) or "").strip() for k in TITLE_PROPERTIES.get(obj, [])]
    title = clean_text(" ".join(p for p in title_parts if p))[:200] or str(properties.get("email") or "")
    return title, "\n".join(lines)


def _parse(title: str, text: str) -> ParsedDocument:
    if not any(ch.isalnum() for ch in text):
        raise DocumentError("no_text", "the record has no text in its configured properties")
    return ParsedDocument(title=title, pages=[Page(None, f"{title}\n{text}" if title else text)])


def _millis(value: Any) -> int | None:
    if value in (None, ""):
        return None
    text = str(value)
    if text.isdigit():
        return int(text)
    stamp = parse_timestamp(text)
    return int(stamp.timestamp() * 1000) if stamp else None


@dataclass(frozen=True)
class ObjectPosition:
    """Where one object's sync stands: the newest modification committed (``since``), the search page after
    it (``after``) within a query started at ``query_since``, and the newest archive already reported."""

    since: int = 0
    after: str | None = None
    query_since: int | None = None
    archived_since: int | None = None  # None: no archive listing finished yet

    @classmethod
    def read(cls, read: CursorReader) -> ObjectPosition:
        return cls(
            since=read.integer("since") or 0,
            after=read.text("after"),
            query_since=read.integer("query_since"),
            archived_since=read.integer("archived_since"),
        )

    def to_json(self) -> dict[str, Any]:
        optional = {"query_since": self.query_since, "archived_since": self.archived_since}
        return {"since": self.since, "after": self.after} | {k: v for k, v in optional.items() if v is not None}


@dataclass(frozen=True)
class HubSpotCursor(ObjectCursor[ObjectPosition]):
    @classmethod
    def from_json(cls, saved: Mapping[str, Any] | None, *, source: str = "hubspot") -> HubSpotCursor:
        return cls(cls.read_objects(source, saved, ObjectPosition.read))

    def position(self, obj: str) -> ObjectPosition:
        return self.objects.get(obj) or ObjectPosition()


class HubSpotSource(HttpSource):
    kind = "hubspot"

    def __init__(
        self,
        settings: HubSpotSettings,
        client: ResilientClient | None = None,
        *,
        gate: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        token = secret_from_env(settings.name, settings.token_env) if client is None else ""
        self.client = client or ResilientClient(
            settings.name,
            settings.http,
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {token}"},
            gate=gate,
        )

    def _document(self, obj: str, record: Any, wanted: list[str]) -> SourceDocument | None:
        if not isinstance(record, dict) or not record.get("id"):
            log.warning("%s: a %s record without id: %.200r", self.settings.name, obj, record)
            return None
        external_id = f"{obj}/{record['id']}"
        uri = f"hubspot://{obj}/{record['id']}"
        properties = record.get("properties")
        if not isinstance(properties, dict):
            error = DocumentError("malformed", f"{external_id}: properties is not an object")
            digest = hashlib.sha256(repr(record).encode()).hexdigest()
            return failing_document(external_id, uri, f"malformed:{digest}", error)
        title, text = record_text(obj, properties, wanted)
        modified = _millis(properties.get(MODIFIED_PROPERTY.get(obj, "hs_lastmodifieddate")) or record.get("updatedAt"))
        return SourceDocument(
            external_id=external_id,
            uri=uri,
            content_hash=hashlib.sha256(f"{title}\x1f{text}".encode()).hexdigest(),
            load=partial(_parse, title, text),
            title=title or external_id,
            modified=datetime.fromtimestamp(modified / 1000, tz=UTC) if modified else None,
            metadata={"object": obj, "hubspot_id": str(record["id"])},
        )

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]:
        state = HubSpotCursor.from_json(cursor, source=self.settings.name)
        for obj in self.settings.objects:
            for docs, deleted, position in self._object(obj, state.position(obj)):
                state = state.moved(obj, position)
                yield Batch(docs, deleted, state.to_json())

    def _object(
        self, obj: str, position: ObjectPosition
    ) -> Iterator[tuple[list[SourceDocument], list[str], ObjectPosition]]:
        """Each search page of the object's changes, then each page of its archive, with the position after it."""
        wanted = self.settings.properties.get(obj) or DEFAULT_PROPERTIES[obj]
        modified_prop = MODIFIED_PROPERTY.get(obj, "hs_lastmodifieddate")
        query_start = position.since if position.query_since is None else position.query_since
        while True:
            body: dict[str, Any] = {
                "filterGroups": [
                    {"filters": [{"propertyName": modified_prop, "operator": "GTE", "value": str(query_start)}]}
                ],
                "sorts": [{"propertyName": modified_prop, "direction": "ASCENDING"}],
                "properties": [*wanted, modified_prop],
                "limit": self.settings.page_size,
            }
            if position.after:
                body["after"] = position.after
            answer = self.client.post_json(f"/crm/v3/objects/{obj}/search", json=body)
            results = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(results, list):
                raise MalformedPayloadError(self.settings.name, f"{obj} search answer has no results list")
            docs = [d for d in (self._document(obj, r, wanted) for r in results) if d is not None]
            latest = max(
                [position.since]
                + [
                    _millis(r["properties"].get(modified_prop)) or 0
                    for r in results
                    if isinstance(r, dict) and isinstance(r.get("properties"), dict)
                ]
            )
            after = ((answer.get("paging") or {}).get("next") or {}).get("after")
            if after and int(after) + self.settings.page_size <= self.settings.search_cap:
                position = replace(position, since=latest, after=str(after), query_since=query_start)
                yield docs, [], position
                continue
            if after:
                # The next page would pass the 10,000-results cap: restart from the last timestamp seen.
                if latest <= query_start:
                    raise MalformedPayloadError(
                        self.settings.name,
                        f"over {self.settings.search_cap} {obj} share one modification time: cannot page on",
                    )
                query_start = latest
                position = replace(position, since=latest, after=None, query_since=query_start)
                yield docs, [], position
                continue
            position = replace(position, since=latest, after=None, query_since=None)
            yield docs, [], position
            break
        yield from self._archived(obj, position)

    def _archived(
        self, obj: str, position: ObjectPosition
    ) -> Iterator[tuple[list[SourceDocument], list[str], ObjectPosition]]:
        """Archived (deleted) records since the last run, from the archived listing."""
        seen_until = position.archived_since or 0
        newest = seen_until
        after: str | None = None
        while True:
            params: dict[str, Any] = {"archived": "true", "limit": self.settings.page_size}
            if after:
                params["after"] = after
            answer = self.client.get_json(f"/crm/v3/objects/{obj}", params=params)
            results = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(results, list):
                raise MalformedPayloadError(self.settings.name, f"{obj} archived listing has no results list")
            deleted = []
            for record in results:
                if not isinstance(record, dict) or not record.get("id"):
                    continue
                archived_at = _millis(record.get("archivedAt")) or 0
                if archived_at > seen_until:
                    deleted.append(f"{obj}/{record['id']}")
                    newest = max(newest, archived_at)
            after = ((answer.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                yield [], deleted, replace(position, archived_since=newest)
                return
            yield [], deleted, position
