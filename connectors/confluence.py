"""Confluence Cloud: the pages of configured spaces, their storage-format (XHTML) bodies as clean text.

The full listing goes through the REST API v2 (``/api/v2/spaces/{id}/pages``, opaque cursors in
``_links.next``); incremental sync through a v1 CQL search on ``lastmodified``. CQL dates have minute
precision, are read in the API account's time zone, and the search index lags edits a little: every
incremental query starts ``overlap_minutes`` before the newest change already seen; pages served again are
recognised downstream by their content hash and cost nothing. (A search page that shifts under an edit
made while the run pages through it can skip a page; the reconcile below is the backstop for that too.)

Deletions: Confluence has no change feed for them. Each incremental run lists, per space, the pages whose
status is ``trashed``, ``deleted`` or ``archived`` (the statuses the v2 listing accepts besides ``current``)
and reports them deleted. Archived pages leave the index too: archiving takes a page out of the space's
live content and out of default search, so answering from it would cite outdated material. A page purged
from the trash between two runs, or restored without an edit, shows in none of these listings; a periodic
reconcile (a full listing every ``reconcile_hours``) catches both: pages known from earlier runs but absent
from the listing are reported deleted, restored pages come back. Only a whole listing counts: a failed
request raises, and so does a listed page without an id (it would count as gone); the mass-delete guard
(``flows/delete_guard.py``) holds a reconcile that would delete most of the source. The known page ids
live in the cursor, compressed, since the pipeline gives a remote source no view of the ledger.

Cursor while listing: ``{"mode": "full", "since": T, "space": KEY, "next": LINK, "seen": IDS, "known": IDS,
"reconciled_at": R}``; T is the newest change when the listing started, so edits made meanwhile are caught
by the first incremental run. Afterwards: ``{"mode": "incremental", "since": T, "latest": T2, "next": LINK,
"phase": "removed"?, "known": IDS, "reconciled_at": R}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from connectors.base import (
    Batch,
    DocumentError,
    Page,
    ParsedDocument,
    SourceDocument,
    SourceSettingsBase,
    failing_document,
)
from connectors.confluence_cursor import ConfluenceCursor
from connectors.confluence_site import basic_auth, changes_cql, cql_date, join_link, site_url, zone
from connectors.confluence_storage import storage_to_text
from connectors.errors import MalformedPayloadError, RequestRejectedError
from connectors.http import HttpPolicy, HttpSource, ResilientClient
from connectors.values import parse_timestamp, secret_from_env

parse_time = parse_timestamp

log = logging.getLogger(__name__)

REMOVED_STATUSES = ("trashed", "deleted", "archived")
LISTING_CAP = 250  # the v2 listings' largest page
EPOCH = "1970-01-01T00:00:00+00:00"


class ConfluenceSettings(SourceSettingsBase):
    kind: Literal["confluence"] = "confluence"
    base_url: str = Field(
        description="Site URL, e.g. https://example.atlassian.net/wiki (/wiki is added when it is missing)."
    )
    email_env: str = Field(default="CONFLUENCE_EMAIL", description="Environment variable with the account's email.")
    token_env: str = Field(default="CONFLUENCE_TOKEN", description="Environment variable with its API token.")
    spaces: list[str] = Field(min_length=1, description="Keys of the spaces to ingest.")
    page_size: int = Field(
        default=100, ge=1, le=LISTING_CAP, description="Pages per request (250: the v2 cap; CQL may serve fewer)."
    )
    overlap_minutes: int = Field(
        default=10, ge=0, description="Incremental queries start this long before the newest change seen."
    )
    timezone: str = Field(default="UTC", description="Time zone of the API account's profile: CQL reads dates in it.")
    reconcile_hours: float | None = Field(
        default=168.0, ge=0, description="Full listing this often, to catch purged and restored pages (None: never)."
    )
    http: HttpPolicy = Field(default_factory=lambda: HttpPolicy(rate_per_second=5.0, burst=5))

    @field_validator("base_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {value!r} is not an http(s) URL such as https://example.atlassian.net/wiki")
        return value.strip()

    @field_validator("spaces")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        keys = [k.strip() for k in value]
        if not all(keys):
            raise ValueError("space keys must not be empty")
        return list(dict.fromkeys(keys))

    @field_validator("timezone")
    @classmethod
    def _knownzone(cls, value: str) -> str:
        zone(value)
        return value


def _parse_page(title: str, storage: str) -> ParsedDocument:
    text = storage_to_text(storage)
    if not any(ch.isalnum() for ch in text):
        raise DocumentError("no_text", "the page has no text once markup is removed")
    return ParsedDocument(title=title, pages=[Page(None, f"{title}\n\n{text}")])


# ---- the source ---------------------------------------------------------------------------------------------


class ConfluenceSource(HttpSource):
    kind = "confluence"

    def __init__(
        self,
        settings: ConfluenceSettings,
        client: ResilientClient | None = None,
        *,
        gate: Callable[[], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.site = site_url(settings.base_url)
        self.zone = zone(settings.timezone)
        self._now = now
        self._space_ids: dict[str, str] | None = None
        self._space_keys: dict[str, str] = {}
        if client is None:
            credentials = [secret_from_env(settings.name, v) for v in (settings.email_env, settings.token_env)]
            client = ResilientClient(
                settings.name,
                settings.http,
                headers={**basic_auth(*credentials), "Accept": "application/json"},
                gate=gate,
            )
        self.client = client

    # -- requests

    def _link(self, link: str, what: str) -> str:
        try:
            return join_link(self.site, link)
        except ValueError as err:
            raise MalformedPayloadError(self.settings.name, f"{what}: {err}") from err

    def _listing(self, url: str, params: dict[str, Any] | None, what: str) -> tuple[list[Any], str | None]:
        """(results, next link as given) of one page of a v1 or v2 listing."""
        body = self.client.get_json(url, params=params)
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise MalformedPayloadError(self.settings.name, f"{what}: the answer has no results list")
        links = body.get("_links") or {}
        following = links.get("next") if isinstance(links, dict) else None
        if following is not None and not isinstance(following, str):
            raise MalformedPayloadError(self.settings.name, f"{what}: _links.next is not a string")
        return results, following or None

    def _spaces(self) -> dict[str, str]:
        """Space key -> id (the v2 listings take ids, CQL takes keys), resolved once per source."""
        if self._space_ids is None:
            ids: dict[str, str] = {}
            for key in self.settings.spaces:
                results, _ = self._listing(f"{self.site}/api/v2/spaces", {"keys": key}, f"space {key}")
                match = [
                    s
                    for s in results
                    if isinstance(s, dict) and str(s.get("key", "")).lower() == key.lower() and s.get("id")
                ]
                if not match:
                    raise RequestRejectedError(
                        self.settings.name, 404, f"space {key!r} not found at {self.site} (or not visible to us)"
                    )
                ids[key] = str(match[0]["id"])
            self._space_ids = ids
            self._space_keys = {v: k for k, v in ids.items()}
        return self._space_ids

    def _first_page(
        self, url: str, params: dict[str, Any], stored: str | None, what: str
    ) -> tuple[list[Any], str | None]:
        """The first page of a listing: where the stored link of an interrupted run points, or from the start
        when the site no longer takes that link (cursors expire). Starting over costs requests, not work:
        pages seen again are unchanged."""
        if stored:
            try:
                return self._listing(self._link(stored, what), None, what)
            except RequestRejectedError as err:
                if err.status not in (400, 404, 410):
                    raise
                log.warning(
                    "%s: %s: the saved cursor was refused (%s); listing from the start", self.settings.name, what, err
                )
        return self._listing(url, params, what)

    def _latest_change(self) -> str:
        """The site's own time of its newest page change: sync starts there, immune to clock skew."""
        results, _ = self._listing(
            f"{self.site}/rest/api/content/search",
            {"cql": changes_cql(self.settings.spaces, None, "desc"), "limit": 1, "expand": "version"},
            "latest change",
        )
        for result in results[:1]:
            version = result.get("version") if isinstance(result, dict) else None
            stamp = parse_time(version.get("when")) if isinstance(version, dict) else None
            if stamp is not None:
                return stamp.isoformat()
        return EPOCH

    # -- documents

    def _document(self, page: Any) -> SourceDocument | None:
        """A page of an answer (v2 or v1 shape) as a document; one without a body is quarantined."""
        if not isinstance(page, dict) or not page.get("id"):
            log.warning("%s: a page without id in the answer: %.200r", self.settings.name, page)
            return None
        page_id = str(page["id"])
        external_id = f"page/{page_id}"
        title = str(page.get("title") or external_id)
        links = page.get("_links")
        webui = links.get("webui") if isinstance(links, dict) else None
        uri = f"{self.site}/pages/viewpage.action?pageId={page_id}"
        if isinstance(webui, str) and webui:
            try:
                uri = join_link(self.site, webui)
            except ValueError:
                log.warning("%s: %s has a web link off the site: %.200r", self.settings.name, external_id, webui)
        body = page.get("body")
        storage = body.get("storage") if isinstance(body, dict) else None
        value = storage.get("value") if isinstance(storage, dict) else None
        if not isinstance(value, str):
            error = DocumentError("malformed", f"{external_id} ({title!r}): no storage-format body in the answer")
            digest = hashlib.sha256(repr(page).encode()).hexdigest()
            return failing_document(external_id, uri, f"malformed:{digest}", error, title=title)
        space = page.get("space")
        if isinstance(space, dict) and space.get("key"):
            space_key: str | None = str(space["key"])
        else:
            space_key = self._space_keys.get(str(page.get("spaceId")))
        version = page.get("version")
        if not isinstance(version, dict):
            version = {}
        return SourceDocument(
            external_id=external_id,
            uri=uri,
            content_hash=hashlib.sha256(f"{title}\x1f{value}".encode()).hexdigest(),
            load=partial(_parse_page, title, value),
            title=title,
            modified=parse_time(version.get("createdAt") or version.get("when")),
            metadata={"space": space_key, "page_id": page_id, "version": version.get("number")},
        )

    def _documents(self, results: list[Any]) -> list[SourceDocument]:
        return [d for d in map(self._document, results) if d is not None]

    # -- sync

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]:
        state = ConfluenceCursor.from_json(cursor, source=self.settings.name)
        self._spaces()
        if state.mode != "incremental":
            yield from self._full(state)
        elif not state.next and state.phase != "removed" and self._reconcile_due(state):
            yield from self._full(ConfluenceCursor(known=state.known))
        else:
            yield from self._incremental(state)

    def _reconcile_due(self, state: ConfluenceCursor) -> bool:
        hours = self.settings.reconcile_hours
        if hours is None:
            return False
        last = parse_time(state.reconciled_at)
        return last is None or self._now() - last >= timedelta(hours=hours)

    def _full(self, state: ConfluenceCursor) -> Iterator[Batch]:
        since = state.since or self._latest_change()
        started = state.reconciled_at or self._now().isoformat()
        seen = set(state.seen)
        spaces = self.settings.spaces
        resumed = state.space in spaces
        link = state.next if resumed else None

        def listing(space: str | None, link: str | None) -> dict[str, Any]:
            here = ConfluenceCursor("full", since, link, state.known, started, space, frozenset(seen))
            return here.to_json()

        for index in range(spaces.index(str(state.space)) if resumed else 0, len(spaces)):
            key = spaces[index]
            what = f"pages of space {key}"
            url = f"{self.site}/api/v2/spaces/{self._spaces()[key]}/pages"
            params = {"body-format": "storage", "status": "current", "limit": self.settings.page_size}
            results, link = self._first_page(url, params, link, what)
            while True:
                docs = self._documents(results)
                if state.known and len(docs) < len(results):
                    # A page we cannot name would count as gone: a partial listing must not delete.
                    raise MalformedPayloadError(
                        self.settings.name,
                        f"{what}: {len(results) - len(docs)} listed page(s) without an id; no page is reconciled "
                        "as deleted from a partial listing",
                    )
                seen.update(d.external_id.removeprefix("page/") for d in docs)
                if not link:
                    break
                yield Batch(docs, [], listing(key, link))
                results, link = self._listing(self._link(link, what), None, what)
            if index + 1 < len(spaces):
                yield Batch(docs, [], listing(spaces[index + 1], None))
                continue
            # All spaces listed: pages known before but absent now were purged, moved away or hidden from us.
            gone = sorted(state.known - seen)
            done = ConfluenceCursor("incremental", since, None, frozenset(seen), started, latest=since)
            yield Batch(docs, [f"page/{p}" for p in gone], done.to_json())

    def _incremental(self, state: ConfluenceCursor) -> Iterator[Batch]:
        since = state.since or EPOCH
        latest = parse_time(state.latest) or parse_time(since) or datetime.fromisoformat(EPOCH)
        known = set(state.known)

        def position(**more: Any) -> dict[str, Any]:
            here = ConfluenceCursor("incremental", since, None, frozenset(known), state.reconciled_at)
            return replace(here, latest=latest.isoformat(), **more).to_json()

        if state.phase != "removed":
            what = "CQL search"
            params = {
                "cql": self._changes_query(since),
                "expand": "body.storage,version,space",
                "limit": self.settings.page_size,
            }
            results, link = self._first_page(f"{self.site}/rest/api/content/search", params, state.next, what)
            while True:
                docs = self._documents(results)
                known.update(d.external_id.removeprefix("page/") for d in docs)
                for result in results:
                    version = result.get("version") if isinstance(result, dict) else None
                    stamp = parse_time(version.get("when")) if isinstance(version, dict) else None
                    latest = max(latest, stamp) if stamp else latest
                if not link:
                    yield Batch(docs, [], position(phase="removed"))
                    break
                yield Batch(docs, [], position(next=link))
                results, link = self._listing(self._link(link, what), None, what)
        yield from self._removed(known, latest, position)

    def _changes_query(self, since: str) -> str:
        start = parse_time(since) or datetime.fromisoformat(EPOCH)
        moment = start - timedelta(minutes=self.settings.overlap_minutes)
        return changes_cql(self.settings.spaces, cql_date(moment, self.zone), "asc")

    def _removed(self, known: set[str], latest: datetime, position: Callable[..., dict[str, Any]]) -> Iterator[Batch]:
        """Trashed, deleted and archived pages of every space, reported deleted. Not checkpointed within:
        the listings carry ids only and repeating them is harmless."""
        steps = [(key, status) for key in self.settings.spaces for status in REMOVED_STATUSES]
        for number, (key, status) in enumerate(steps, 1):
            what = f"{status} pages of space {key}"
            url = f"{self.site}/api/v2/spaces/{self._spaces()[key]}/pages"
            params: dict[str, Any] | None = {"status": status, "limit": LISTING_CAP}
            while True:
                results, link = self._listing(url, params, what)
                # Only pages the answer itself says are removed: a server ignoring the filter deletes nothing.
                ids = [
                    str(r["id"])
                    for r in results
                    if isinstance(r, dict) and r.get("id") and r.get("status") in REMOVED_STATUSES
                ]
                known.difference_update(ids)
                deleted = [f"page/{i}" for i in ids]
                if link:
                    yield Batch([], deleted, position(phase="removed"))
                    url, params = self._link(link, what), None
                    continue
                if number < len(steps):
                    yield Batch([], deleted, position(phase="removed"))
                else:
                    yield Batch([], deleted, position(since=latest.isoformat()))
                break
