"""An emulated Salesforce REST API (the parts ragline uses), served by tests.support.httpserver on 127.0.0.1:
``query``/``queryAll`` with the SOQL ragline sends (``SELECT fields FROM obj [WHERE SystemModstamp >|>= T]
ORDER BY SystemModstamp, Id``), parent fields (``Account.Name``), batches of ``batchSize`` with
``nextRecordsUrl`` query locators that can be expired, records in the recycle bin (``IsDeleted``) for
``queryAll`` only, bearer auth and Salesforce's error bodies (``[{"message", "errorCode"}]``)."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.httpserver import Logged, Reply, ScriptedServer

VERSION = "v60.0"
TOKEN = "00Dtest!session-token"
ID_PREFIX = {"Account": "001", "Contact": "003", "Opportunity": "006", "Case": "500", "Lead": "00Q"}

_SOQL = re.compile(
    r"SELECT (?P<fields>.+?) FROM (?P<obj>\w+)"
    r"(?: WHERE SystemModstamp (?P<op>>=|>) (?P<since>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ))?"
    r" ORDER BY SystemModstamp, Id"
)
_FIELD = re.compile(r"[A-Za-z]\w*(?:\.[A-Za-z]\w*)*")


def sf_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, [{"message": message, "errorCode": code}])


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _lookup(record: dict[str, Any], name: str) -> tuple[str, Any]:
    """The stored key and value for a name, matched without regard to case like SOQL does."""
    for key, value in record.items():
        if key.lower() == name.lower():
            return key, value
    return name, None


@dataclass
class _Locator:
    rows: list[dict[str, Any]]
    size: int
    kind: str


@dataclass
class FakeSalesforce:
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # object -> Id -> fields
    schema: dict[str, set[str]] = field(default_factory=dict)  # object -> fields; unlisted objects take any
    batch_size: int | None = None  # Salesforce may answer with smaller batches than asked: tests page by 10
    step: timedelta = timedelta(seconds=1)  # time between two writes; 0 gives records one shared SystemModstamp
    token: str = TOKEN
    session_valid: bool = True
    fault: Callable[[Logged], Reply | None] = lambda _: None
    locators: dict[str, _Locator] = field(default_factory=dict)
    api_calls: int = 0
    _clock: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _locator_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: ScriptedServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _tick(self) -> str:
        self._clock += self.step
        return _stamp(self._clock)

    def upsert(self, obj: str, rid: str | None = None, **fields: Any) -> str:
        """Create or update a record; parent fields are dicts (``Account={"Name": "Acme"}``)."""
        rid = rid or f"{ID_PREFIX.get(obj, 'a00')}{next(self._ids):012d}AAA"
        record = self.records.setdefault(obj, {}).setdefault(rid, {"Id": rid, "IsDeleted": False})
        record.update(fields)
        record["SystemModstamp"] = self._tick()
        return rid

    def delete(self, obj: str, rid: str) -> None:
        """To the recycle bin: ``queryAll`` still returns it, with ``IsDeleted`` true."""
        record = self.records[obj][rid]
        record["IsDeleted"] = True
        record["SystemModstamp"] = self._tick()

    def expire_locators(self) -> None:
        """What 15 idle minutes (or opening too many cursors) do to the open query locators."""
        self.locators.clear()

    def mount(self, srv: ScriptedServer) -> None:
        """Serve on ``srv``; locator paths are routed as they are handed out."""
        self._server = srv
        handler = self.handler()
        srv.route(f"/services/data/{VERSION}/query", handler)
        srv.route(f"/services/data/{VERSION}/queryAll", handler)

    def _row(self, obj: str, record: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"/services/data/{VERSION}/sobjects/{obj}/{record['Id']}"}
        }
        for name in fields:
            head, *rest = name.split(".")
            key, value = _lookup(record, head)
            if not rest:
                row[key] = value
                continue
            if not isinstance(value, dict):
                row[key] = None
                continue
            parent = row.get(key) or {"attributes": {"type": key}}
            child_key, child = _lookup(value, rest[0])
            parent[child_key] = child
            row[key] = parent
        return row

    def _query(self, req: Logged, kind: str) -> Reply:
        soql = (req.query.get("q") or [""])[0]
        match = _SOQL.fullmatch(soql)
        if match is None:
            return sf_error(400, "MALFORMED_QUERY", f"unexpected SOQL: {soql[:200]}")
        obj = match["obj"]
        fields = [f.strip() for f in match["fields"].split(",")]
        if obj not in self.records and obj not in self.schema and obj not in ID_PREFIX:
            return sf_error(400, "INVALID_TYPE", f"sObject type '{obj}' is not supported.")
        known = {f.lower() for f in self.schema.get(obj, set())} | {"id", "systemmodstamp", "isdeleted"}
        for name in fields:
            if not _FIELD.fullmatch(name):
                return sf_error(400, "MALFORMED_QUERY", f"unexpected token: '{name}'")
            if obj in self.schema and name.split(".")[0].lower() not in known:
                return sf_error(400, "INVALID_FIELD", f"No such column '{name}' on entity '{obj}'. Check the spelling.")
        rows = list(self.records.get(obj, {}).values())
        if kind == "query":
            rows = [r for r in rows if not r["IsDeleted"]]
        if match["since"]:
            since = datetime.fromisoformat(match["since"].replace("Z", "+00:00"))

            def after(r: dict[str, Any]) -> bool:
                stamp = datetime.fromisoformat(r["SystemModstamp"])
                return stamp >= since if match["op"] == ">=" else stamp > since

            rows = [r for r in rows if after(r)]
        rows.sort(key=lambda r: (r["SystemModstamp"], r["Id"]))
        size = self.batch_size or _batch_size(req) or 2000
        locator = _Locator([self._row(obj, r, fields) for r in rows], size, kind)
        return self._answer(locator, 0)

    def _answer(self, locator: _Locator, offset: int) -> Reply:
        page = locator.rows[offset : offset + locator.size]
        body: dict[str, Any] = {"totalSize": len(locator.rows), "done": True, "records": page}
        if offset + locator.size < len(locator.rows):
            with self._lock:
                key = f"01g{next(self._locator_ids):012d}"
                self.locators[key] = locator
            path = f"/services/data/{VERSION}/query/{key}-{offset + locator.size}"
            if self._server is not None:
                self._server.route(path, self.handler())
            body.update(done=False, nextRecordsUrl=path)
        return Reply(200, body, {"Sforce-Limit-Info": f"api-usage={self.api_calls}/15000"})

    def _more(self, req: Logged) -> Reply:
        key, _, offset = req.path.rsplit("/", 1)[-1].partition("-")
        locator = self.locators.get(key)
        if locator is None or not offset.isdigit():
            return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._answer(locator, int(offset))

    def handler(self) -> Callable[[Logged], Reply]:
        def handle(req: Logged) -> Reply:
            injected = self.fault(req)
            if injected is not None:
                return injected
            self.api_calls += 1
            if not self.session_valid or not _authorized(req, self.token):
                return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
            prefix = f"/services/data/{VERSION}/"
            if req.method != "GET" or not req.path.startswith(prefix):
                return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
            resource = req.path[len(prefix) :]
            if resource in ("query", "queryAll"):
                return self._query(req, resource)
            if resource.startswith("query/"):
                return self._more(req)
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")

        return handle


def _headers(req: Logged) -> dict[str, str]:
    return {k.lower(): v for k, v in req.headers.items()}


def _authorized(req: Logged, token: str) -> bool:
    return _headers(req).get("authorization") == f"Bearer {token}"


def _batch_size(req: Logged) -> int | None:
    options = _headers(req).get("sforce-query-options", "")
    match = re.search(r"batchSize=(\d+)", options)
    return max(200, min(2000, int(match[1]))) if match else None
