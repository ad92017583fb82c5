"""MediaWiki Action API: pages with their wikitext as clean text, ``continue`` paging, incremental sync from
``list=recentchanges`` (edits, new pages, moves, deletions, restores).

The index mirrors the content pages of the configured namespaces: redirects and pages moved out of those
namespaces are not documents (a page that becomes one is deleted), a page moved in is ingested. Behaviour
checked against a real MediaWiki 1.39 in tests/flows/test_real_mediawiki.py.

The cursor (``MediaWikiCursor``) is ``{"mode": "full", "since": T, "ns": N, "continue": {...}}`` during the
first full listing (T: when it started, so edits made meanwhile are caught by the first incremental run) and
``{"mode": "incremental", "since": T, "continue": {...}}`` afterwards.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
from connectors.cursors import CursorReader
from connectors.errors import CursorError, MalformedPayloadError
from connectors.http import HttpPolicy, HttpSource, ResilientClient
from connectors.text import clean_text

log = logging.getLogger(__name__)

_PAGE_PROPS = {
    "prop": "revisions|info",
    "rvprop": "ids|timestamp|content",
    "rvslots": "main",
    "inprop": "url",
}


class MediaWikiSettings(SourceSettingsBase):
    kind: Literal["mediawiki"] = "mediawiki"
    base_url: str = Field(description="URL of the wiki's api.php, e.g. https://wiki.example.org/w/api.php")
    namespaces: list[int] = Field(default_factory=lambda: [0], description="Namespaces to ingest (0: articles).")
    page_size: int = Field(default=50, ge=1, le=50, description="Pages per request (50: MediaWiki's content cap).")
    user_agent: str = Field(default="ragline/0.1 (RAG ingestion)", description="Sent as User-Agent, as wikis ask.")
    http: HttpPolicy = Field(default_factory=HttpPolicy)


def wikitext_to_text(wikitext: str) -> str:
    import mwparserfromhell

    return clean_text(mwparserfromhell.parse(wikitext).strip_code(normalize=True, collapse=True))


def _parse_page(title: str, wikitext: str) -> ParsedDocument:
    text = wikitext_to_text(wikitext)
    if not any(ch.isalnum() for ch in text):
        raise DocumentError("no_text", "the page has no text once markup is removed")
    return ParsedDocument(title=title, pages=[Page(None, f"{title}\n\n{text}")])


@dataclass(frozen=True)
class MediaWikiCursor:
    """Where a sync stands: listing namespace ``ns`` from ``cont`` (``full``, ``since`` the newest change when
    the listing began), or following recent changes from ``since`` (``incremental``)."""

    mode: Literal["full", "incremental"] = "full"
    since: str | None = None
    ns: int | None = None
    cont: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, saved: Mapping[str, Any] | None, *, source: str = "mediawiki") -> MediaWikiCursor:
        if not saved:
            return cls()
        read = CursorReader(source, saved)
        mode: Literal["full", "incremental"] = (
            "incremental" if read.choice("mode", ("full", "incremental"), "full") == "incremental" else "full"
        )
        since = read.text("since")
        if mode == "incremental" and since is None:
            raise read.fail("since", "an incremental cursor needs the time of the last change seen")
        return cls(mode, since, read.integer("ns"), read.mapping("continue"))

    def to_json(self) -> dict[str, Any]:
        if self.mode == "incremental":
            return {"mode": "incremental", "since": self.since, "continue": dict(self.cont)}
        return {"mode": "full", "since": self.since, "ns": self.ns, "continue": dict(self.cont)}


class MediaWikiSource(HttpSource):
    kind = "mediawiki"

    def __init__(
        self,
        settings: MediaWikiSettings,
        client: ResilientClient | None = None,
        *,
        gate: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or ResilientClient(
            settings.name, settings.http, headers={"User-Agent": settings.user_agent}, gate=gate
        )

    def _query(self, params: dict[str, Any]) -> dict[str, Any]:
        body = self.client.get_json(
            self.settings.base_url, params={"action": "query", "format": "json", "formatversion": "2", **params}
        )
        if not isinstance(body, dict):
            raise MalformedPayloadError(self.settings.name, "query answer is not a JSON object")
        if "error" in body:
            error = body["error"]
            info = error.get("info") if isinstance(error, dict) else error
            raise MalformedPayloadError(self.settings.name, f"API error: {info}")
        return body

    def _document(self, page: Any) -> SourceDocument | None:
        """A page of the answer as a document; a malformed one becomes a document that is quarantined."""
        if not isinstance(page, dict) or "pageid" not in page:
            log.warning("%s: a page without pageid in the answer: %.200r", self.settings.name, page)
            return None
        external_id = str(page["pageid"])
        title = str(page.get("title") or external_id)
        uri = str(page.get("fullurl") or f"{self.settings.base_url}?curid={external_id}")
        try:
            revision = page["revisions"][0]
            content = revision["slots"]["main"]["content"]
            stamp = datetime.fromisoformat(str(revision["timestamp"]).replace("Z", "+00:00"))
        except (KeyError, IndexError, TypeError, ValueError) as err:
            reason = DocumentError("malformed", f"page {title!r}: no readable latest revision ({err!r})")
            digest = hashlib.sha256(repr(page).encode()).hexdigest()
            return failing_document(external_id, uri, f"malformed:{digest}", reason, title=title)
        digest = hashlib.sha256(f"{title}\x1f{content}".encode()).hexdigest()
        return SourceDocument(
            external_id=external_id,
            uri=uri,
            content_hash=digest,
            load=partial(_parse_page, title, str(content)),
            title=title,
            modified=stamp,
            metadata={"revid": revision.get("revid"), "namespace": page.get("ns")},
        )

    def _complete_batches(
        self, params: dict[str, Any], cont: dict[str, Any]
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """Pages of each complete batch, with the continuation that follows it.

        MediaWiki caps an answer's size ($wgAPIMaxResultSize): it then sends part of the pages' props and a
        ``continue`` that repeats the same pages for the rest (``rvcontinue``, ``incontinue``), and says
        ``batchcomplete`` only once every page of the batch has all of them. A page is judged only then:
        before, a page without its revision is not yet a page without content, nor a deleted one.
        """
        merged: dict[int, dict[str, Any]] = {}
        while True:
            body = self._query({**params, **cont})
            pages = (body.get("query") or {}).get("pages") or []
            if not isinstance(pages, list):
                raise MalformedPayloadError(self.settings.name, "query.pages is not a list")
            for page in pages:
                if not isinstance(page, dict) or not isinstance(page.get("pageid"), int):
                    log.warning("%s: a page without pageid in the answer: %.200r", self.settings.name, page)
                    continue
                known = merged.setdefault(page["pageid"], {})
                known.update({k: v for k, v in page.items() if k not in known or not known[k]})
            following = body.get("continue") or {}
            if not isinstance(following, dict):
                raise MalformedPayloadError(self.settings.name, "continue is not an object")
            if following and following == cont:
                # a single page larger than the answer cap: MediaWiki would repeat the same answer forever
                raise MalformedPayloadError(
                    self.settings.name, f"continuation does not advance ({following}): result size limit too low?"
                )
            cont = following
            if body.get("batchcomplete") or not cont:
                yield list(merged.values()), cont
                if not cont:
                    return
                merged = {}

    def _wanted(self, page: dict[str, Any]) -> bool:
        """Content pages of the configured namespaces; redirects carry no content of their own."""
        return not page.get("missing") and not page.get("redirect") and page.get("ns") in self.settings.namespaces

    def _latest_change(self) -> str:
        """The wiki's own time of its latest change: incremental sync starts there, immune to clock skew
        between ragline and the wiki."""
        body = self._query({"list": "recentchanges", "rcdir": "older", "rclimit": 1, "rcprop": "timestamp"})
        changes = (body.get("query") or {}).get("recentchanges") or []
        if changes and isinstance(changes[0], dict) and changes[0].get("timestamp"):
            return str(changes[0]["timestamp"])
        return "1970-01-01T00:00:00Z"

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]:
        position = MediaWikiCursor.from_json(cursor, source=self.settings.name)
        if position.mode == "incremental":
            yield from self._incremental(position)
        else:
            yield from self._full(position)

    def _full(self, cursor: MediaWikiCursor) -> Iterator[Batch]:
        since = cursor.since or self._latest_change()
        namespaces = self.settings.namespaces
        if cursor.ns is not None and cursor.ns not in namespaces:
            raise CursorError(self.settings.name, "ns", f"namespace {cursor.ns} is not configured any more")
        first = namespaces.index(cursor.ns) if cursor.ns is not None else 0
        for position, namespace in enumerate(namespaces[first:], start=first):
            cont = dict(cursor.cont) if cursor.ns == namespace else {}
            params = {
                "generator": "allpages",
                "gapnamespace": namespace,
                "gapfilterredir": "nonredirects",
                "gaplimit": self.settings.page_size,
                **_PAGE_PROPS,
            }
            for pages, following in self._complete_batches(params, cont):
                docs = [doc for page in pages if self._wanted(page) and (doc := self._document(page)) is not None]
                if following:
                    nxt = MediaWikiCursor("full", since, namespace, following)
                elif position + 1 < len(namespaces):
                    nxt = MediaWikiCursor("full", since, namespaces[position + 1])
                else:  # all listed: from now on, only what changed since the listing began
                    nxt = MediaWikiCursor("incremental", since)
                yield Batch(docs, [], nxt.to_json())

    def _concerns(self, change: dict[str, Any]) -> bool:
        """Whether a change may touch a page of the configured namespaces. A move is listed under the old
        title's namespace: a page moved in from elsewhere is found by the target namespace of its log."""
        if change.get("ns") in self.settings.namespaces:
            return True
        params = change.get("logparams")
        return (
            change.get("logtype") == "move"
            and isinstance(params, dict)
            and (params.get("target_ns") in self.settings.namespaces)
        )

    def _incremental(self, cursor: MediaWikiCursor) -> Iterator[Batch]:
        """Every page a change touched is looked up as it is now, and its current state decides: gone,
        a redirect or moved out of the namespaces is deleted, anything else is (re)ingested. So a deletion
        followed by a restore, or a move followed by an edit, ends where the wiki ends."""
        since = str(cursor.since)
        cont = dict(cursor.cont)
        latest = since
        while True:
            # Not filtered by rcnamespace: a move is listed under its old namespace, and a page moved into
            # the configured namespaces must not be missed; other namespaces' changes are dropped here.
            body = self._query(
                {
                    "list": "recentchanges",
                    "rcstart": since,
                    "rcdir": "newer",
                    "rcprop": "title|ids|timestamp|loginfo",
                    "rctype": "edit|new|log",
                    "rclimit": 500,
                    **cont,
                }
            )
            changes = (body.get("query") or {}).get("recentchanges")
            if not isinstance(changes, list):
                raise MalformedPayloadError(self.settings.name, "query.recentchanges is not a list")
            touched: list[int] = []
            for change in changes:
                if not isinstance(change, dict):
                    continue
                latest = max(latest, str(change.get("timestamp") or latest))
                if not self._concerns(change):
                    continue
                pageid = change.get("pageid")
                if isinstance(pageid, int) and pageid > 0:
                    touched.append(pageid)
                elif change.get("logtype") == "delete":
                    # MediaWiki 1.39 gives the deleted page's id (log_page); an older wiki may not, and then
                    # the deletion cannot be mapped to a document
                    log.warning(
                        "%s: deletion of %r without a page id, ignored", self.settings.name, change.get("title")
                    )
            docs: list[SourceDocument] = []
            deleted: list[str] = []
            unique = list(dict.fromkeys(touched))
            for start in range(0, len(unique), self.settings.page_size):
                ids = unique[start : start + self.settings.page_size]
                for pages, _ in self._complete_batches({"pageids": "|".join(map(str, ids)), **_PAGE_PROPS}, {}):
                    for page in pages:
                        if not self._wanted(page):
                            deleted.append(str(page["pageid"]))
                        elif (doc := self._document(page)) is not None:
                            docs.append(doc)
            cont = body.get("continue") or {}
            if not isinstance(cont, dict):
                raise MalformedPayloadError(self.settings.name, "continue is not an object")
            if cont:
                yield Batch(docs, deleted, MediaWikiCursor("incremental", since, cont=cont).to_json())
            else:
                yield Batch(docs, deleted, MediaWikiCursor("incremental", latest).to_json())
                return
