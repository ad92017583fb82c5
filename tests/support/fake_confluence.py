"""An emulated Confluence Cloud REST API (the parts ragline uses), served under ``/wiki`` like a real site:
space lookup by key, the v2 pages listing of a space with opaque cursors and a ``status`` filter, the v1 CQL
content search (``space in (...)``, ``type = page``, ``lastmodified >= "yyyy/MM/dd HH:mm"``, ``order by
lastmodified``) with ``_links.next`` paging, basic auth answered with Atlassian's 401 JSON, and a ``fault``
hook for injected failures. The page store has its own clock: every change moves it on a little, so several
changes share a CQL minute as they do on a busy site.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from tests.support.httpserver import Logged, Reply, ScriptedServer, serve

EMAIL = "bot@example.com"
TOKEN = "atlassian-api-token"
UNAUTHORIZED = {"code": 401, "message": "Client must be authenticated to access this resource."}
_CQL = re.compile(
    r"^space\s+in\s*\((?P<spaces>[^)]*)\)\s+and\s+type\s*=\s*page"
    r'(?:\s+and\s+lastmodified\s*>=\s*"(?P<since>[^"]+)")?'
    r"\s+order\s+by\s+lastmodified\s+(?P<order>asc|desc)$",
    re.IGNORECASE,
)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class FakePage:
    id: str
    space: str
    title: str
    body: str
    version: int
    when: datetime
    created: datetime
    status: str = "current"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class FakeConfluence:
    email: str = EMAIL
    token: str = TOKEN
    spaces: dict[str, str] = field(default_factory=dict)  # key -> id
    pages: dict[str, FakePage] = field(default_factory=dict)
    fault: Callable[[Logged], Reply | None] = lambda _: None
    tick: timedelta = timedelta(seconds=23)
    clock: datetime = field(default_factory=lambda: datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(98_001))
    _cursors: dict[str, Any] = field(default_factory=dict)
    _server: ScriptedServer | None = None

    # -- the page store

    def _now(self) -> datetime:
        self.clock += self.tick
        return self.clock

    def add_space(self, key: str) -> str:
        self.spaces[key] = str(1_000 + len(self.spaces))
        if self._server is not None:
            self._route_space(self._server, self.spaces[key])
        return self.spaces[key]

    def create(self, space: str, title: str, body: str) -> FakePage:
        now = self._now()
        page = FakePage(str(next(self._ids)), space, title, body, 1, now, now)
        self.pages[page.id] = page
        return page

    def edit(self, page_id: str, body: str | None = None, title: str | None = None) -> None:
        page = self.pages[page_id]
        page.body = page.body if body is None else body
        page.title = page.title if title is None else title
        page.version += 1
        page.when = self._now()

    def trash(self, page_id: str) -> None:
        """Deleting a page in Confluence moves it to the space's trash; its version and time stay."""
        self.pages[page_id].status = "trashed"

    def delete(self, page_id: str) -> None:
        self.pages[page_id].status = "deleted"

    def archive(self, page_id: str) -> None:
        self.pages[page_id].status = "archived"

    def restore(self, page_id: str) -> None:
        self.pages[page_id].status = "current"

    def purge(self, page_id: str) -> None:
        """Gone without a trace, as after emptying the trash."""
        del self.pages[page_id]

    def expire_cursors(self) -> None:
        """Every cursor handed out so far is refused from now on, as when a site's cursors time out."""
        self._cursors.clear()

    # -- serving

    def mount(self, server: ScriptedServer) -> None:
        self._server = server
        server.route("/wiki/api/v2/spaces", self.handler())
        server.route("/wiki/rest/api/content/search", self.handler())
        for space_id in self.spaces.values():
            self._route_space(server, space_id)

    def _route_space(self, server: ScriptedServer, space_id: str) -> None:
        server.route(f"/wiki/api/v2/spaces/{space_id}/pages", self.handler())

    def _authorized(self, req: Logged) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
        return {k.lower(): v for k, v in req.headers.items()}.get("authorization") == expected

    def handler(self) -> Callable[[Logged], Reply]:
        def handle(req: Logged) -> Reply:
            injected = self.fault(req)
            if injected is not None:
                return injected
            if not self._authorized(req):
                return Reply(401, UNAUTHORIZED)
            q = {k: v[0] for k, v in req.query.items()}
            if req.path == "/wiki/api/v2/spaces":
                keys = set(q.get("keys", "").split(",")) if q.get("keys") else set(self.spaces)
                found = [self._space_json(k) for k in self.spaces if k in keys]
                return Reply(200, {"results": found, "_links": {"base": self._base()}})
            if req.path == "/wiki/rest/api/content/search":
                return self._search(req, q)
            match = re.fullmatch(r"/wiki/api/v2/spaces/(\d+)/pages", req.path)
            if match:
                return self._listing(match.group(1), req)
            return Reply(404, {"errors": [{"status": 404, "code": "NOT_FOUND", "title": "Not Found"}]})

        return handle

    def _base(self) -> str:
        return f"{self._server.url if self._server else 'http://127.0.0.1'}/wiki"

    def _space_json(self, key: str) -> dict[str, Any]:
        return {"id": self.spaces[key], "key": key, "name": f"Space {key}", "type": "global", "status": "current"}

    def _webui(self, page: FakePage) -> str:
        return f"/spaces/{page.space}/pages/{page.id}/{page.title.replace(' ', '+')}"

    def _cursor(self, state: Any) -> str:
        token = secrets.token_urlsafe(12)
        self._cursors[token] = state
        return token

    def _listing(self, space_id: str, req: Logged) -> Reply:
        key = next((k for k, v in self.spaces.items() if v == space_id), None)
        if key is None:
            return Reply(404, {"errors": [{"status": 404, "code": "NOT_FOUND", "title": "Space not found"}]})
        statuses = {s for raw in req.query.get("status", ["current,archived"]) for s in raw.split(",")}
        limit = min(int((req.query.get("limit") or ["25"])[0]), 250)
        after = 0
        if "cursor" in req.query:
            if req.query["cursor"][0] not in self._cursors:
                return Reply(400, {"errors": [{"status": 400, "code": "INVALID_REQUEST_PARAMETER", "title": "cursor"}]})
            after = int(self._cursors[req.query["cursor"][0]])
        with_body = req.query.get("body-format") == ["storage"]
        ordered = sorted(
            (p for p in self.pages.values() if p.space == key and p.status in statuses and int(p.id) > after),
            key=lambda p: int(p.id),
        )
        page = ordered[:limit]
        links: dict[str, Any] = {"base": self._base()}
        if len(ordered) > limit:
            params = {k: v[0] for k, v in req.query.items() if k != "cursor"}
            params["cursor"] = self._cursor(page[-1].id)
            links["next"] = f"/wiki/api/v2/spaces/{space_id}/pages?{urlencode(params)}"
        return Reply(200, {"results": [self._v2(p, with_body) for p in page], "_links": links})

    def _v2(self, page: FakePage, with_body: bool) -> dict[str, Any]:
        return {
            "id": page.id,
            "status": page.status,
            "title": page.title,
            "spaceId": self.spaces[page.space],
            "parentId": None,
            "authorId": "557058:fake-author",
            "createdAt": _stamp(page.created),
            "version": {"number": page.version, "createdAt": _stamp(page.when), "message": "", "minorEdit": False},
            "body": {"storage": {"representation": "storage", "value": page.body}} if with_body else {},
            "_links": {"webui": self._webui(page), "tinyui": f"/x/{page.id}"},
        }

    def _search(self, req: Logged, q: dict[str, str]) -> Reply:
        if "cursor" in q:
            if q["cursor"] not in self._cursors:
                return Reply(400, {"statusCode": 400, "message": "Invalid cursor"})
            start = int(self._cursors[q["cursor"]])
        else:
            start = int(q.get("start", 0))
        match = _CQL.match(q.get("cql", "").strip())
        if match is None:
            message = f"Could not parse cql : {q.get('cql', '')}"
            return Reply(400, {"statusCode": 400, "message": message})
        keys = {k.replace('\\"', '"') for k in _QUOTED.findall(match.group("spaces"))}
        since = (
            datetime.strptime(match.group("since"), "%Y/%m/%d %H:%M").replace(tzinfo=UTC) if match["since"] else None
        )
        hits = sorted(
            (
                p
                for p in self.pages.values()
                if p.space in keys and p.status == "current" and (since is None or p.when >= since)
            ),
            key=lambda p: (p.when, int(p.id)),
            reverse=match.group("order").lower() == "desc",
        )
        limit = min(int(q.get("limit", 25)), 50)  # Confluence serves fewer with body expansions
        page = hits[start : start + limit]
        expand = set(q.get("expand", "").split(","))
        links: dict[str, Any] = {"base": self._base(), "context": "/wiki"}
        if start + limit < len(hits):
            params = {k: v for k, v in q.items() if k not in ("cursor", "start")}
            params.update(next="true", cursor=self._cursor(start + limit), start=str(start + limit))
            links["next"] = f"/rest/api/content/search?{urlencode(params)}"
        results = [self._v1(p, expand) for p in page]
        return Reply(200, {"results": results, "start": start, "limit": limit, "size": len(results), "_links": links})

    def _v1(self, page: FakePage, expand: set[str]) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": page.id,
            "type": "page",
            "status": page.status,
            "title": page.title,
            "_links": {"webui": self._webui(page), "self": f"{self._base()}/rest/api/content/{page.id}"},
            "_expandable": {},
        }
        if "space" in expand:
            item["space"] = {"id": int(self.spaces[page.space]), "key": page.space, "name": f"Space {page.space}"}
        if "version" in expand:
            item["version"] = {"number": page.version, "when": _stamp(page.when), "minorEdit": False}
        if "body.storage" in expand:
            item["body"] = {"storage": {"value": page.body, "representation": "storage"}}
        return item


@contextmanager
def serve_confluence(fake: FakeConfluence) -> Iterator[ScriptedServer]:
    """The fake on 127.0.0.1 under ``/wiki``; the server's log counts requests as ``tests.support.httpserver`` does."""
    with serve() as server:
        fake.mount(server)
        yield server
