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
from the listing are reported deleted, restored pages come back. The known page ids live in the cursor,
compressed, since the pipeline gives a remote source no view of the ledger.

Cursor while listing: ``{"mode": "full", "since": T, "space": KEY, "next": LINK, "seen": IDS, "known": IDS,
"reconciled_at": R}``; T is the newest change when the listing started, so edits made meanwhile are caught
by the first incremental run. Afterwards: ``{"mode": "incremental", "since": T, "latest": T2, "next": LINK,
"phase": "removed"?, "known": IDS, "reconciled_at": R}``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from html.parser import HTMLParser
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from connectors.errors import MalformedPayloadError, RequestRejectedError
from connectors.http import HttpPolicy, ResilientClient
from connectors.text import clean_text
from connectors.values import parse_timestamp, secret_from_env

log = logging.getLogger(__name__)

REMOVED_STATUSES = ("trashed", "deleted", "archived")
LISTING_CAP = 250  # the v2 listings' largest page
EPOCH = "1970-01-01T00:00:00+00:00"


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from err


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
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value


# ---- URLs -------------------------------------------------------------------------------------------------


def site_url(base_url: str) -> str:
    """The root every API path hangs off. Confluence Cloud serves under ``/wiki``, so a URL that stops at the
    host gets it added: both spellings operators copy from the browser work."""
    site = base_url.strip().rstrip("/")
    return site if urlsplit(site).path.endswith("/wiki") else f"{site}/wiki"


def join_link(site: str, link: str) -> str:
    """Absolute URL of a link from an answer.

    v2 ``_links.next`` carries the context path (``/wiki/api/v2/...?cursor=``) while v1 ``_links.next`` and
    every ``_links.webui`` are relative to the site (``/rest/api/...``, ``/spaces/...``). Absolute links must
    stay on the site: the client sends credentials with every request.
    """
    site_parts = urlsplit(site)
    origin = f"{site_parts.scheme}://{site_parts.netloc}"
    parts = urlsplit(link)
    if parts.scheme or parts.netloc:
        if f"{parts.scheme}://{parts.netloc}" != origin:
            raise ValueError(f"link {link!r} leaves the site {origin}")
        return link
    path = link if link.startswith("/") else f"/{link}"
    context = site_parts.path.rstrip("/")
    if context and (path == context or path.startswith((f"{context}/", f"{context}?"))):
        return origin + path
    return site + path


def basic_auth(email: str, token: str) -> dict[str, str]:
    """Atlassian Cloud's basic auth: the account's email and an API token."""
    return {"Authorization": "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode("ascii")}


# ---- CQL and cursor pieces ----------------------------------------------------------------------------------


def cql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cql_date(moment: datetime, zone: tzinfo) -> str:
    """A CQL date: minute precision, in the account's time zone (the minute is floored, never rounded up)."""
    return moment.astimezone(zone).strftime("%Y/%m/%d %H:%M")


def changes_cql(spaces: Sequence[str], since: str | None, order: Literal["asc", "desc"] = "asc") -> str:
    clauses = [f"space in ({', '.join(cql_string(k) for k in spaces)})", "type = page"]
    if since is not None:
        clauses.append(f"lastmodified >= {cql_string(since)}")
    return " and ".join(clauses) + f" order by lastmodified {order}"


def pack_ids(ids: Iterable[str]) -> str:
    """Page ids, sorted and deflated: the known set of a large wiki stays a small part of the cursor."""
    raw = "\n".join(sorted(set(ids))).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack_ids(packed: Any) -> set[str]:
    if not packed:
        return set()
    raw = zlib.decompress(base64.b64decode(str(packed))).decode()
    return set(raw.split("\n")) if raw else set()


parse_time = parse_timestamp


# ---- storage format -> text ---------------------------------------------------------------------------------

_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_WHITESPACE = re.compile(r"\s+")
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "blockquote", "ac:structured-macro", "ac:layout-section"}
)
_LINES = frozenset(
    {"div", "li", "ul", "ol", "dl", "dt", "dd", "tr", "section", "ac:layout-cell", "ac:task", "ac:task-list"}
    | {"ac:plain-text-body", "ac:rich-text-body", "ac:image", "ac:caption"}
)
_VOID = frozenset({"br", "hr", "img", "col", "ac:emoticon", "time"})
# Parameters and editor chrome: text an author never wrote as content.
_SKIP = frozenset(
    {"ac:parameter", "ac:placeholder", "ac:task-id", "ac:task-uuid", "ac:task-status", "ac:adf-attribute"}
    | {"script", "style"}
)
_PREFORMATTED = frozenset({"pre", "ac:plain-text-body"})
_CELLS = frozenset({"td", "th"})
_LINK_TARGETS = {
    "ri:page": "ri:content-title",
    "ri:blog-post": "ri:content-title",
    "ri:attachment": "ri:filename",
    "ri:space": "ri:space-key",
    "ri:url": "ri:value",
}


class _StorageText(HTMLParser):
    """Text of storage-format XHTML: blocks as line breaks, table cells separated by ``|``, macro parameters
    dropped, macro bodies kept, ``ac:link`` targets as their titles.

    Breaks are held back until the next text and the strongest one wins, so nested blocks (``<td><p>``,
    ``<li><p>``) give one separator rather than a pile of blank lines.
    """

    _STRENGTH: ClassVar[dict[str, int]] = {"": 0, " ": 1, " | ": 2, "\n": 3, "\n\n": 4}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pending = ""
        self.stack: list[str] = []
        self.skip = 0
        self.pre = 0
        self.cells = 0
        self.rows: list[int] = []
        self.links: list[list[Any]] = []  # [target title or None, whether the link has its own text]

    def text(self) -> str:
        return "".join(self.out)

    @property
    def swallowed(self) -> bool:
        """An unclosed parameter hid everything after it: better the noise of stripping tags than losing text."""
        return self.skip > 0

    def _break(self, separator: str) -> None:
        if self.cells and separator != " | ":
            separator = " "  # a table row stays on one line
        if self._STRENGTH[separator] > self._STRENGTH[self.pending]:
            self.pending = separator

    def _emit(self, text: str) -> None:
        if not text or (self.pending and not text.strip()):
            return
        if self.pending and self.out:
            self.out.append(self.pending)
        self.pending = ""
        self.out.append(text)
        if self.links and text.strip():
            self.links[-1][1] = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip:
            if tag in _SKIP:
                self.skip += 1
                self.stack.append(tag)
            elif tag not in _VOID and not tag.startswith("ri:"):
                self.stack.append(tag)
            return
        attributes = {k: v for k, v in attrs if v is not None}
        if tag.startswith("ri:"):
            if self.links and tag in _LINK_TARGETS and self.links[-1][0] is None:
                self.links[-1][0] = attributes.get(_LINK_TARGETS[tag])
            return
        if tag == "time" and attributes.get("datetime"):
            self._break(" ")
            self._emit(attributes["datetime"])
            self._break(" ")
        if tag in ("br", "hr"):
            self._break("\n")
        if tag in _VOID:
            return
        self.stack.append(tag)
        if tag in _SKIP:
            self.skip += 1
        elif tag in _PARAGRAPHS or tag in _LINES:
            self._break("\n\n" if tag in _PARAGRAPHS else "\n")
        if tag in _PREFORMATTED:
            self.pre += 1
        if tag == "tr":
            self.rows.append(0)
        elif tag in _CELLS:
            self._break(" | " if self.rows and self.rows[-1] else " ")
            if self.rows:
                self.rows[-1] += 1
            self.cells += 1
        elif tag == "ac:link":
            self.links.append([None, False])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        depth = len(self.stack)
        self.handle_starttag(tag, attrs)
        if len(self.stack) > depth:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            return  # a stray end tag
        while self.stack:
            if self._close(self.stack.pop()) == tag:
                return

    def _close(self, tag: str) -> str:
        if tag in _SKIP:
            self.skip -= 1
            return tag
        if self.skip:
            return tag
        if tag in _PREFORMATTED:
            self.pre -= 1
        if tag == "tr" and self.rows:
            self.rows.pop()
        elif tag in _CELLS:
            self.cells = max(0, self.cells - 1)
        elif tag == "ac:link" and self.links:
            target, has_text = self.links.pop()
            if target and not has_text:
                self._emit(target)
        if tag in _PARAGRAPHS or tag in _LINES:
            self._break("\n\n" if tag in _PARAGRAPHS else "\n")
        return tag

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self._emit(data if self.pre else _WHITESPACE.sub(" ", data))


def strip_tags(xhtml: str) -> str:
    """The fallback for markup the parser cannot follow: every tag removed, CDATA kept as written."""
    pieces: list[str] = []
    position = 0
    for match in _CDATA.finditer(xhtml):
        pieces.append(html.unescape(_TAG.sub(" ", xhtml[position : match.start()])))
        pieces.append(match.group(1))
        position = match.end()
    pieces.append(html.unescape(_TAG.sub(" ", xhtml[position:])))
    return clean_text(" ".join(pieces))


def storage_to_text(xhtml: str) -> str:
    """Clean text of a page body in Confluence's storage format (XHTML with ``ac:``/``ri:`` elements)."""
    # CDATA (code and plain-text macro bodies) becomes escaped text, so the parser treats it as data
    # whatever its version does with marked sections.
    source = _CDATA.sub(lambda m: html.escape(m.group(1), quote=False), xhtml)
    parser = _StorageText()
    try:
        parser.feed(source)
        parser.close()
    except (AssertionError, ValueError) as err:  # html.parser on unknown marked sections (<![foo[ ... ]]>)
        log.debug("storage body not parseable (%s); stripping tags instead", err)
        return strip_tags(xhtml)
    if parser.swallowed:
        return strip_tags(xhtml)
    return clean_text(parser.text())


def _parse_page(title: str, storage: str) -> ParsedDocument:
    text = storage_to_text(storage)
    if not any(ch.isalnum() for ch in text):
        raise DocumentError("no_text", "the page has no text once markup is removed")
    return ParsedDocument(title=title, pages=[Page(None, f"{title}\n\n{text}")])


# ---- the source ---------------------------------------------------------------------------------------------


class ConfluenceSource:
    kind = "confluence"

    def __init__(
        self,
        settings: ConfluenceSettings,
        client: ResilientClient | None = None,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.site = site_url(settings.base_url)
        self.zone = _zone(settings.timezone)
        self._now = now
        self._space_ids: dict[str, str] | None = None
        self._space_keys: dict[str, str] = {}
        if client is None:
            credentials = [secret_from_env(settings.name, v) for v in (settings.email_env, settings.token_env)]
            client = ResilientClient(
                settings.name,
                settings.http,
                headers={**basic_auth(*credentials), "Accept": "application/json"},
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
        state = dict(cursor or {})
        self._spaces()
        if state.get("mode") != "incremental":
            yield from self._full(state)
        elif not state.get("next") and state.get("phase") != "removed" and self._reconcile_due(state):
            yield from self._full({"known": state.get("known")})
        else:
            yield from self._incremental(state)

    def _reconcile_due(self, state: dict[str, Any]) -> bool:
        hours = self.settings.reconcile_hours
        if hours is None:
            return False
        last = parse_time(state.get("reconciled_at"))
        return last is None or self._now() - last >= timedelta(hours=hours)

    def _full(self, state: dict[str, Any]) -> Iterator[Batch]:
        since = str(state.get("since") or self._latest_change())
        started = str(state.get("reconciled_at") or self._now().isoformat())
        known = str(state.get("known") or "")
        seen = unpack_ids(state.get("seen"))
        spaces = self.settings.spaces
        resumed = state.get("space") in spaces
        link: str | None = state.get("next") if resumed else None

        def listing(**position: Any) -> dict[str, Any]:
            base = {"mode": "full", "since": since, "seen": pack_ids(seen), "known": known, "reconciled_at": started}
            return base | position

        for index in range(spaces.index(state["space"]) if resumed else 0, len(spaces)):
            key = spaces[index]
            what = f"pages of space {key}"
            url = f"{self.site}/api/v2/spaces/{self._spaces()[key]}/pages"
            params = {"body-format": "storage", "status": "current", "limit": self.settings.page_size}
            results, link = self._first_page(url, params, link, what)
            while True:
                docs = self._documents(results)
                seen.update(d.external_id.removeprefix("page/") for d in docs)
                if not link:
                    break
                yield Batch(docs, [], listing(space=key, next=link))
                results, link = self._listing(self._link(link, what), None, what)
            if index + 1 < len(spaces):
                yield Batch(docs, [], listing(space=spaces[index + 1], next=None))
                continue
            # All spaces listed: pages known before but absent now were purged, moved away or hidden from us.
            gone = sorted(unpack_ids(known) - seen)
            done = {
                "mode": "incremental",
                "since": since,
                "latest": since,
                "next": None,
                "known": pack_ids(seen),
                "reconciled_at": started,
            }
            yield Batch(docs, [f"page/{p}" for p in gone], done)

    def _incremental(self, state: dict[str, Any]) -> Iterator[Batch]:
        since = str(state.get("since") or EPOCH)
        latest = parse_time(state.get("latest")) or parse_time(since) or datetime.fromisoformat(EPOCH)
        known = unpack_ids(state.get("known"))
        reconciled = state.get("reconciled_at")

        def position(**more: Any) -> dict[str, Any]:
            base = {
                "mode": "incremental",
                "since": since,
                "latest": latest.isoformat(),
                "next": None,
                "known": pack_ids(known),
                "reconciled_at": reconciled,
            }
            return base | more

        if state.get("phase") != "removed":
            what = "CQL search"
            params = {
                "cql": self._changes_query(since),
                "expand": "body.storage,version,space",
                "limit": self.settings.page_size,
            }
            results, link = self._first_page(f"{self.site}/rest/api/content/search", params, state.get("next"), what)
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
                    done = position(since=latest.isoformat())
                    yield Batch([], deleted, done)
                break
