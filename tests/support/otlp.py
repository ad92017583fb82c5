"""A real OTLP/HTTP trace collector on 127.0.0.1 for tests and benches: ``POST /v1/traces`` bodies decoded as
``ExportTraceServiceRequest`` (protobuf, gzip or not) into flat spans, answered as a collector answers."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support.httpserver import Logged, Reply, ScriptedServer, serve


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    """Empty for a root span."""
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[str]
    """Span ids linked to."""
    status_code: int
    """0 unset, 1 ok, 2 error (``Status.StatusCode``)."""
    status_message: str
    resource: dict[str, Any]
    scope: str


@dataclass
class Collector:
    """What the collector received, span by span, in arrival order."""

    url: str = ""
    requests: int = 0
    received: list[Span] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        """The value of ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds ``/v1/traces``)."""
        return self.url

    def spans(self, name: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self.received if name is None or s.name == name]

    def handle(self, logged: Logged) -> Reply:
        body = logged.body
        if logged.headers.get("Content-Encoding", logged.headers.get("content-encoding")) == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes=_attributes(s.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in s.events],
                            links=[link.span_id.hex() for link in s.links],
                            status_code=s.status.code,
                            status_message=s.status.message,
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.received.extend(spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        return Reply(200, answer, headers={"Content-Type": "application/x-protobuf"})


@contextmanager
def collector() -> Iterator[Collector]:
    """A collector listening on 127.0.0.1 for the duration."""
    received = Collector()
    server = ScriptedServer()
    server.route("/v1/traces", received.handle)
    with serve(server) as running:
        received.url = running.url
        yield received
