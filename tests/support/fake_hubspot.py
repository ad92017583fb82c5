"""An emulated HubSpot CRM v3 API: the search endpoint (GTE filter on the modified property, ascending
sort, ``after`` paging, a results cap per query like the real 10,000), the archived listing, bearer auth,
and HubSpot's rate-limit headers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.httpserver import Logged, Reply

TOKEN = "pat-test-token"


@dataclass
class FakeHubSpot:
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # object -> id -> record
    archived: dict[str, dict[str, int]] = field(default_factory=dict)  # object -> id -> archivedAt ms
    cap: int = 10_000
    clock: int = 1_700_000_000_000
    fault: Callable[[Logged], Reply | None] = lambda _: None

    def _tick(self) -> int:
        self.clock += 1000
        return self.clock

    def upsert(self, obj: str, rid: str, **props: Any) -> None:
        prop = "lastmodifieddate" if obj == "contacts" else "hs_lastmodifieddate"
        record = self.records.setdefault(obj, {}).setdefault(rid, {"id": rid, "properties": {}})
        record["properties"].update({k: str(v) for k, v in props.items()})
        record["properties"][prop] = str(self._tick())

    def archive(self, obj: str, rid: str) -> None:
        self.records[obj].pop(rid)
        self.archived.setdefault(obj, {})[rid] = self._tick()

    def handler(self) -> Callable[[Logged], Reply]:
        def handle(req: Logged) -> Reply:
            injected = self.fault(req)
            if injected is not None:
                return injected
            parts = req.path.strip("/").split("/")  # crm v3 objects <obj> [search]
            if len(parts) < 4 or parts[:3] != ["crm", "v3", "objects"]:
                return Reply(404, {"message": "not found"})
            obj = parts[3]
            if req.method == "POST" and parts[-1] == "search":
                body = json.loads(req.body)
                flt = body["filterGroups"][0]["filters"][0]
                since = int(flt["value"])
                prop = flt["propertyName"]
                matching = sorted(
                    (r for r in self.records.get(obj, {}).values() if int(r["properties"][prop]) >= since),
                    key=lambda r: (int(r["properties"][prop]), int(r["id"])),
                )
                after = int(body.get("after") or 0)
                if after >= self.cap:
                    return Reply(
                        400, {"message": f"paging beyond {self.cap} results is not allowed", "status": "error"}
                    )
                limit = int(body.get("limit", 10))
                page = matching[after : after + limit]
                answer: dict[str, Any] = {"total": len(matching), "results": page}
                if after + limit < len(matching):
                    answer["paging"] = {"next": {"after": str(after + limit)}}
                return Reply(200, answer, {"X-HubSpot-RateLimit-Remaining": "99"})
            if req.method == "GET" and len(parts) == 4 and req.query.get("archived") == ["true"]:
                items = sorted(self.archived.get(obj, {}).items(), key=lambda kv: kv[1])
                after = int((req.query.get("after") or ["0"])[0])
                limit = int((req.query.get("limit") or ["10"])[0])
                page = [
                    {"id": rid, "archived": True, "archivedAt": str(at)} for rid, at in items[after : after + limit]
                ]
                answer = {"results": page}
                if after + limit < len(items):
                    answer["paging"] = {"next": {"after": str(after + limit)}}
                return Reply(200, answer)
            return Reply(404, {"message": "not found"})

        return handle
