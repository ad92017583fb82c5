"""MediaWiki Action API: pages with their wikitext as clean text, ``continue`` paging, incremental sync from
``list=recentchanges`` (edits, new pages, moves, deletions).

The cursor is ``{"mode": "full", "continue": {...}, "since": T}`` during the first full listing (T: when
it started, so edits made meanwhile are caught by the first incremental run) and
``{"mode": "incremental", "since": T, "continue": {...}}`` afterwards.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import Batch, DocumentError, Page, ParsedDocument, SourceDocument, failing_document
from connectors.errors import MalformedPayloadError
from connectors.http import HttpPolicy, ResilientClient
from connectors.text import clean_text

log = logging.getLogger(__name__)

_PAGE_PROPS = {
    "prop": "revisions|info",
    "rvprop": "ids|timestamp|content",
    "rvslots": "main",
    "inprop": "url",
}


class MediaWikiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["mediawiki"] = "mediawiki"
    name: str = Field(min_length=1, description="Source name in the ledger and the CLI.")
    base_url: str = Field(description="URL of the wiki's api.php, e.g. https://wiki.example.org/w/api.php")
    namespaces: list[int] = Field(default_factory=lambda: [0], description="Namespaces to ingest (0: articles).")
    page_size: int = Field(default=50, ge=1, le=50, description="Pages per request (50: MediaWiki's content cap).")
    user_agent: str = Field(default="ragline/0.1 (RAG ingestion)", description="Sent as User-Agent, as wikis ask.")
    http: HttpPolicy = Field(default_factory=HttpPolicy)
    schedule: str | None = Field(default=None, description="Cron schedule of batch runs (deployments).")


def wikitext_to_text(wikitext: str) -> str:
    import mwparserfromhell

    return clean_text(mwparserfromhell.parse(wikitext).strip_code(normalize=True, collapse=True))


def _parse_page(title: str, wikitext: str) -> ParsedDocument:
    text = wikitext_to_text(wikitext)
    if not any(ch.isalnum() for ch in text):
        raise DocumentError("no_text", "the page has no text once markup is removed")
    return ParsedDocument(title=title, pages=[Page(None, f"{title}\n\n{text}")])


class MediaWikiSource:
    kind = "mediawiki"

    def __init__(self, settings: MediaWikiSettings, client: ResilientClient | None = None) -> None:
        self.settings = settings
        self.client = client or ResilientClient(
            settings.name, settings.http, headers={"User-Agent": settings.user_agent}
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

    def _pages(self, body: dict[str, Any]) -> list[SourceDocument]:
        pages = (body.get("query") or {}).get("pages") or []
        if not isinstance(pages, list):
            raise MalformedPayloadError(self.settings.name, "query.pages is not a list")
        docs = []
        for page in pages:
            if isinstance(page, dict) and page.get("missing"):
                continue
            if isinstance(page, dict) and "revisions" not in page:
                continue  # its content comes with a later continuation of the same listing
            doc = self._document(page)
            if doc is not None:
                docs.append(doc)
        return docs

    def _latest_change(self) -> str:
        """The wiki's own time of its latest change: incremental sync starts there, immune to clock skew
        between ragline and the wiki."""
        body = self._query({"list": "recentchanges", "rcdir": "older", "rclimit": 1, "rcprop": "timestamp"})
        changes = (body.get("query") or {}).get("recentchanges") or []
        if changes and isinstance(changes[0], dict) and changes[0].get("timestamp"):
            return str(changes[0]["timestamp"])
        return "1970-01-01T00:00:00Z"

    def batches(self, cursor: dict[str, Any] | None) -> Iterator[Batch]:
        cursor = dict(cursor or {})
        if cursor.get("mode") != "incremental":
            yield from self._full(cursor)
            return
        yield from self._incremental(cursor)

    def _full(self, cursor: dict[str, Any]) -> Iterator[Batch]:
        since = cursor.get("since") or self._latest_change()
        for namespace in self.settings.namespaces[
            self.settings.namespaces.index(cursor["ns"]) if "ns" in cursor else 0 :
        ]:
            cont: dict[str, Any] = dict(cursor.get("continue") or {}) if cursor.get("ns") == namespace else {}
            while True:
                params = {
                    "generator": "allpages",
                    "gapnamespace": namespace,
                    "gaplimit": self.settings.page_size,
                    **_PAGE_PROPS,
                    **cont,
                }
                body = self._query(params)
                docs = self._pages(body)
                cont = body.get("continue") or {}
                if not isinstance(cont, dict):
                    raise MalformedPayloadError(self.settings.name, "continue is not an object")
                nxt = {"mode": "full", "since": since, "ns": namespace, "continue": cont}
                if not cont:
                    break
                yield Batch(docs, [], nxt)
            # the last page of a namespace: move to the next one, or to incremental mode when all are listed
            remaining = self.settings.namespaces[self.settings.namespaces.index(namespace) + 1 :]
            done_ns: dict[str, Any]
            if remaining:
                done_ns = {"mode": "full", "since": since, "ns": remaining[0], "continue": {}}
            else:
                done_ns = {"mode": "incremental", "since": since, "continue": {}}
            yield Batch(docs, [], done_ns)

    def _incremental(self, cursor: dict[str, Any]) -> Iterator[Batch]:
        since = str(cursor["since"])
        cont = dict(cursor.get("continue") or {})
        latest = since
        while True:
            body = self._query(
                {
                    "list": "recentchanges",
                    "rcstart": since,
                    "rcdir": "newer",
                    "rcprop": "title|ids|timestamp|loginfo",
                    "rctype": "edit|new|log",
                    "rcnamespace": "|".join(str(n) for n in self.settings.namespaces),
                    "rclimit": 500,
                    **cont,
                }
            )
            changes = (body.get("query") or {}).get("recentchanges")
            if not isinstance(changes, list):
                raise MalformedPayloadError(self.settings.name, "query.recentchanges is not a list")
            changed: list[int] = []
            deleted: list[str] = []
            for change in changes:
                if not isinstance(change, dict):
                    continue
                latest = max(latest, str(change.get("timestamp") or latest))
                pageid = int(change.get("pageid") or 0)
                if change.get("type") == "log" and change.get("logtype") == "delete":
                    if change.get("logaction") == "delete" and pageid:
                        deleted.append(str(pageid))
                    elif pageid:  # restored
                        changed.append(pageid)
                elif pageid:
                    changed.append(pageid)
            docs: list[SourceDocument] = []
            unique = list(dict.fromkeys(changed))
            for start in range(0, len(unique), self.settings.page_size):
                ids = unique[start : start + self.settings.page_size]
                page_body = self._query({"pageids": "|".join(map(str, ids)), **_PAGE_PROPS})
                found = self._pages(page_body)
                docs.extend(found)
                missing = set(map(str, ids)) - {d.external_id for d in found}
                deleted.extend(sorted(missing - set(deleted)))
            cont = body.get("continue") or {}
            if cont:
                yield Batch(docs, deleted, {"mode": "incremental", "since": since, "continue": cont})
            else:
                yield Batch(docs, deleted, {"mode": "incremental", "since": latest, "continue": {}})
                return
