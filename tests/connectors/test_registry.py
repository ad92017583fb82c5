"""The factory of remote connectors: each gets the shared-quota gate at construction, counts its requests in
``stats`` and closes its client when its ``with`` block ends. Against a real server on 127.0.0.1 that knows
no route, so every connector's first request is refused at once."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from connectors.errors import RequestRejectedError
from connectors.registry import SourceSettings, remote_source
from tests.support.httpserver import serve

SETTINGS: dict[str, dict[str, Any]] = {
    "mediawiki": {"base_url": "{url}/w/api.php"},
    "hubspot": {"base_url": "{url}"},
    "salesforce": {"base_url": "{url}"},
    "confluence": {"base_url": "{url}/wiki", "spaces": ["ENG"]},
}


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_the_gate_is_called_before_every_request_and_with_closes(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("HUBSPOT_TOKEN", "SALESFORCE_TOKEN", "CONFLUENCE_EMAIL", "CONFLUENCE_TOKEN"):
        monkeypatch.setenv(variable, "secret")
    gate_calls: list[str] = []
    with serve() as srv:
        config = {k: v.format(url=srv.url) if isinstance(v, str) else v for k, v in SETTINGS[kind].items()}
        settings = TypeAdapter(SourceSettings).validate_python({"name": "src", "kind": kind, **config})
        with remote_source(settings, gate=lambda: gate_calls.append(kind)) as connector:
            with pytest.raises(RequestRejectedError, match="HTTP 404"):
                list(connector.batches(None))
            assert connector.kind == kind
            assert gate_calls == [kind] and connector.stats.requests == len(srv.calls()) == 1
        with pytest.raises(RuntimeError, match="client has been closed"):
            list(connector.batches(None))
        assert len(srv.calls()) == 1
