"""An emulated MediaWiki Action API (the parts ragline uses), served by tests.support.httpserver on 127.0.0.1:
``generator=allpages`` with ``continue`` paging, ``pageids`` lookups, ``list=recentchanges``, and fault
injection (429 with and without Retry-After, 5xx, resets, bodies cut short)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.httpserver import Logged, Reply


@dataclass
class WikiPage:
    pageid: int
    title: str
    content: str
    revid: int
    timestamp: str
    ns: int = 0


@dataclass
class FakeWiki:
    pages: dict[int, WikiPage] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    fault: Callable[[Logged], Reply | None] = lambda _: None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _revs: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _clock: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def _tick(self) -> str:
        self._clock += timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(self, title: str, content: str, ns: int = 0) -> WikiPage:
        stamp = self._tick()
        page = WikiPage(next(self._ids), title, content, next(self._revs), stamp, ns)
        self.pages[page.pageid] = page
        self.changes.append({"type": "new", "ns": ns, "title": title, "pageid": page.pageid, "timestamp": stamp})
        return page

    def edit(self, pageid: int, content: str) -> None:
        page = self.pages[pageid]
        page.content, page.revid, page.timestamp = content, next(self._revs), self._tick()
        self.changes.append(
            {"type": "edit", "ns": page.ns, "title": page.title, "pageid": pageid, "timestamp": page.timestamp}
        )

    def delete(self, pageid: int) -> None:
        page = self.pages.pop(pageid)
        self.changes.append(
            {
                "type": "log",
                "logtype": "delete",
                "logaction": "delete",
                "ns": page.ns,
                "title": page.title,
                "pageid": pageid,
                "timestamp": self._tick(),
            }
        )

    def move(self, pageid: int, new_title: str) -> None:
        page = self.pages[pageid]
        old, page.title = page.title, new_title
        self.changes.append(
            {
                "type": "log",
                "logtype": "move",
                "logaction": "move",
                "ns": page.ns,
                "title": old,
                "pageid": pageid,
                "timestamp": self._tick(),
            }
        )

    def _page_json(self, page: WikiPage, base: str) -> dict[str, Any]:
        return {
            "pageid": page.pageid,
            "ns": page.ns,
            "title": page.title,
            "fullurl": f"{base}/wiki/{page.title.replace(' ', '_')}",
            "revisions": [
                {
                    "revid": page.revid,
                    "timestamp": page.timestamp,
                    "slots": {"main": {"contentmodel": "wikitext", "content": page.content}},
                }
            ],
        }

    def handler(self, base: str) -> Callable[[Logged], Reply]:
        def handle(req: Logged) -> Reply:
            injected = self.fault(req)
            if injected is not None:
                return injected
            q = {k: v[0] for k, v in req.query.items()}
            if q.get("action") != "query":
                return Reply(200, {"error": {"code": "badvalue", "info": "only action=query here"}})
            if q.get("generator") == "allpages":
                ns = int(q.get("gapnamespace", 0))
                limit = int(q.get("gaplimit", 10))
                ordered = sorted((p for p in self.pages.values() if p.ns == ns), key=lambda p: p.title)
                start = q.get("gapcontinue")
                if start is not None:
                    ordered = [p for p in ordered if p.title >= start]
                body: dict[str, Any] = {
                    "batchcomplete": True,
                    "query": {"pages": [self._page_json(p, base) for p in ordered[:limit]]},
                }
                if len(ordered) > limit:
                    body["continue"] = {"gapcontinue": ordered[limit].title, "continue": "gapcontinue||"}
                return Reply(200, body)
            if "pageids" in q:
                out = []
                for raw in q["pageids"].split("|"):
                    page = self.pages.get(int(raw))
                    out.append(self._page_json(page, base) if page else {"pageid": int(raw), "missing": True})
                return Reply(200, {"batchcomplete": True, "query": {"pages": out}})
            if q.get("list") == "recentchanges" and q.get("rcdir") == "older":
                return Reply(
                    200, {"query": {"recentchanges": [{"timestamp": c["timestamp"]} for c in self.changes[-1:]]}}
                )
            if q.get("list") == "recentchanges":
                since = q["rcstart"]
                limit = int(q.get("rclimit", 10))
                offset = int(q.get("rccontinue", 0))
                newer = [c for c in self.changes if c["timestamp"] >= since]
                body = {"query": {"recentchanges": newer[offset : offset + limit]}}
                if offset + limit < len(newer):
                    body["continue"] = {"rccontinue": str(offset + limit), "continue": "-||"}
                return Reply(200, body)
            return Reply(200, {"error": {"code": "badquery", "info": json.dumps(q)}})

        return handle


def flaky(rate: float, seed: int = 1) -> Callable[[Logged], Reply | None]:
    """Fail about ``rate`` of the calls in the ways real APIs do."""
    rng = random.Random(seed)

    def fault(_: Logged) -> Reply | None:
        if rng.random() >= rate:
            return None
        return rng.choice(
            [
                Reply(429, {"error": "rate limited"}, {"Retry-After": "0"}),
                Reply(429, {"error": "rate limited"}),
                Reply(503, b"<html>Service Unavailable</html>"),
                Reply(500, {"error": "internal"}),
                Reply(reset=True),
                Reply(200, b'{"query": {"pages": [{"pageid": 1, "tit'),  # a transfer cut short
            ]
        )

    return fault
