"""Source metrics and spans from the one HTTP layer, against real HTTP servers on 127.0.0.1 (the emulated
HubSpot API and scripted replies). The registry is global per process, so counters are compared before and
after; sleeps and clocks are injected where a wait would otherwise be real."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from connectors.errors import CircuitOpenError, TransientError
from connectors.http import HttpPolicy, ResilientClient
from connectors.hubspot import HubSpotSettings
from connectors.registry import remote_source
from tests.support.fake_hubspot import TOKEN, FakeHubSpot
from tests.support.httpserver import Logged, Reply, serve


class FakeTime:
    """A clock that moves only when the code under test sleeps (or a test moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """Counter samples of one source, read before and after."""

    NAMES = ("ragline_source_retries_total", "ragline_source_throttled_total")

    def __init__(self, source: str, statuses: tuple[str, ...]) -> None:
        self.source, self.statuses = source, statuses
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        values = {n: sample(n, source=self.source) for n in self.NAMES}
        for status in self.statuses:
            values[status] = sample("ragline_source_requests_total", source=self.source, status=status)
        return values

    def now(self) -> dict[str, float]:
        after = self._read()
        return {k: after[k] - self.before[k] for k in after}


def client(url: str, source: str, fake: FakeTime, **policy: object) -> ResilientClient:
    return ResilientClient(
        source,
        HttpPolicy.model_validate({"read_timeout": 2.0, "backoff_base": 0.5, **policy}),
        base_url=url,
        clock=fake.clock,
        wall_clock=fake.clock,
        sleep=fake.sleep,
        rng=lambda: 1.0,
    )


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_a_configured_source_counts_throttling_and_retries_under_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's connector (as flows build it) labels its calls with the source's configured name."""
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    fake = FakeHubSpot()
    for i in range(3):
        fake.upsert("contacts", str(i + 1), firstname=f"n{i}")
    faults = iter(
        [
            Reply(429, {"message": "slow down"}, {"Retry-After": "0"}),
            Reply(503, {"message": "maintenance"}, {"Retry-After": "0"}),
            Reply(502, {"message": "bad gateway"}),
        ]
    )

    def fault(req: Logged) -> Reply | None:
        return next(faults, None) if req.path.endswith("/search") else None

    fake.fault = fault
    deltas = Deltas("telemetry-crm", ("200", "429", "502", "503"))
    with serve() as srv:
        handler = fake.handler()
        srv.route("/crm/v3/objects/contacts/search", handler)
        srv.route("/crm/v3/objects/contacts", handler)
        settings = HubSpotSettings.model_validate(
            {
                "name": "telemetry-crm",
                "base_url": srv.url,
                "objects": ["contacts"],
                "http": {"backoff_base": 0.001, "backoff_max": 0.002, "rate_per_second": None},
            }
        )
        with remote_source(settings) as source:
            records = [doc for batch in source.batches(None) for doc in batch.documents]
            stats = source.stats
    assert len(records) == 3
    changes = deltas.now()
    assert changes["429"] == changes["503"] == changes["502"] == 1
    assert changes["200"] == stats.requests - 3 >= 2  # the search page and the archived listing
    assert changes["ragline_source_retries_total"] == 3 == stats.retries
    # 429 and 503-with-Retry-After are the source pushing back; a bare 502 is an outage.
    assert changes["ragline_source_throttled_total"] == 2 == stats.throttled
    assert sample("ragline_source_wait_seconds_total", source="telemetry-crm", why="backoff") > 0


def test_breaker_gauge_follows_every_transition() -> None:
    """Open after the threshold, half-open while the probe is in the air (read by the server as it answers
    the probe), closed once the probe succeeds."""
    fake = FakeTime()
    seen_by_probe: list[float] = []
    replies = iter([Reply(500, {"message": "down"}), Reply(500, {"message": "down"})])

    def handle(req: Logged) -> Reply:
        reply = next(replies, None)
        if reply is not None:
            return reply
        seen_by_probe.append(sample("ragline_source_breaker_open", source="telemetry-breaker"))
        return Reply(200, {"ok": True})

    with serve() as srv:
        srv.route("/x", handle)
        with client(srv.url, "telemetry-breaker", fake, max_attempts=2, breaker_threshold=2) as c:
            assert sample("ragline_source_breaker_open", source="telemetry-breaker") == 0.0
            with pytest.raises(TransientError):
                c.get_json("/x")
            assert sample("ragline_source_breaker_open", source="telemetry-breaker") == 1.0
            with pytest.raises(CircuitOpenError):
                c.get_json("/x")
            assert sample("ragline_source_breaker_open", source="telemetry-breaker") == 1.0
            fake.now += c.policy.breaker_reset_seconds
            assert c.get_json("/x") == {"ok": True}
    assert seen_by_probe == [0.5]
    assert sample("ragline_source_breaker_open", source="telemetry-breaker") == 0.0


def test_a_probe_answered_429_lets_the_next_call_probe_again() -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route(
            "/x",
            [Reply(500, {}), Reply(429, {}, {"Retry-After": "1"}), Reply(200, {"ok": 1})],
        )
        with client(srv.url, "telemetry-probe", fake, max_attempts=1, breaker_threshold=1) as c:
            with pytest.raises(TransientError):
                c.get_json("/x")
            fake.now += c.policy.breaker_reset_seconds
            with pytest.raises(TransientError, match="429"):
                c.get_json("/x")
            assert c.get_json("/x") == {"ok": 1}
    assert sample("ragline_source_breaker_open", source="telemetry-probe") == 0.0


def test_attempts_without_an_answer_are_counted_by_error_class() -> None:
    fake = FakeTime()
    deltas = Deltas("telemetry-transport", ("timeout", "transport", "connect", "200"))
    with serve() as srv:
        srv.route("/x", [Reply(reset=True), Reply(200, {}, delay=1.0), Reply(200, {"ok": 2})])
        with client(srv.url, "telemetry-transport", fake, read_timeout=0.3) as c:
            assert c.get_json("/x") == {"ok": 2}
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with client(closed, "telemetry-transport", fake, max_attempts=1) as c, pytest.raises(TransientError):
            c.get_json("/x")
    changes = deltas.now()
    assert (changes["transport"], changes["timeout"], changes["connect"], changes["200"]) == (1, 1, 1, 1)
    assert changes["ragline_source_retries_total"] == 2


def test_waits_imposed_on_ourselves_are_not_throttling() -> None:
    """Bucket and shared-quota waits add to their own seconds; the throttled counter stays for pushback."""
    fake = FakeTime()
    before = {
        why: sample("ragline_source_wait_seconds_total", source="telemetry-wait", why=why)
        for why in ("bucket", "quota")
    }
    deltas = Deltas("telemetry-wait", ("200",))
    with serve() as srv:
        srv.route("/x", [Reply(200, {"ok": 1})])
        with client(srv.url, "telemetry-wait", fake, rate_per_second=0.5, burst=1) as c:
            c.gate = lambda: fake.sleep(2.0)  # a quota held by another process for 2 s
            for _ in range(3):
                c.get_json("/x")
    waited = {
        why: sample("ragline_source_wait_seconds_total", source="telemetry-wait", why=why) - before[why]
        for why in ("bucket", "quota")
    }
    # The gate's 2 s refill the bucket too: each later call waits 0 s on it; without the gate, 2 s each.
    assert waited == {"bucket": 0.0, "quota": 6.0}
    assert deltas.now() == {"ragline_source_retries_total": 0, "ragline_source_throttled_total": 0, "200": 3}


def test_one_span_per_call_with_retries_as_events_and_no_secrets(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    fake = FakeTime()
    with serve() as srv:
        srv.route(
            "/api/items",
            [
                Reply(429, {"message": "slow down"}, {"Retry-After": "3"}),
                Reply(503, {"message": "busy"}),
                Reply(200, {"ok": True}),
            ],
        )
        srv.route("/api/missing", [Reply(500, {"message": "token=hunter2 leaked by the provider"})])
        base = srv.url.replace("http://", "http://alice:hunter2@") + "/api"
        with ResilientClient(
            "telemetry-spans",
            HttpPolicy(backoff_base=0.5, max_attempts=3, breaker_threshold=50),
            base_url=base,
            clock=fake.clock,
            wall_clock=fake.clock,
            sleep=fake.sleep,
            rng=lambda: 1.0,
            tracer=provider.get_tracer("test"),
        ) as c:
            assert c.get_json("/items", params={"api_key": "hunter2", "page": "2"}) == {"ok": True}
            with pytest.raises(TransientError):
                c.get_json("/missing?token=hunter2")
    ok, failed = exporter.get_finished_spans()
    port = int(srv.url.rsplit(":", 1)[1])
    assert ok.name == "GET" and ok.kind is SpanKind.CLIENT
    assert dict(ok.attributes or {}) == {
        "http.request.method": "GET",
        "url.full": f"http://127.0.0.1:{port}/api/items",
        "server.address": "127.0.0.1",
        "server.port": port,
        "ragline.source": "telemetry-spans",
        "http.response.status_code": 200,
    }
    assert [(e.name, dict(e.attributes or {})) for e in ok.events] == [
        ("retry", {"attempt": 1, "wait_seconds": 3.0, "reason": "HTTP 429"}),
        ("retry", {"attempt": 2, "wait_seconds": 1.0, "reason": "HTTP 503"}),
    ]
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.attributes is not None and failed.attributes["url.full"] == f"http://127.0.0.1:{port}/api/missing"
    assert failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["error.type"] == "TransientError"
    assert failed.status.status_code is StatusCode.ERROR
    assert [dict(e.attributes or {}) for e in failed.events] == [
        {"attempt": 1, "wait_seconds": 0.5, "reason": "HTTP 500"},
        {"attempt": 2, "wait_seconds": 1.0, "reason": "HTTP 500"},
    ]
    for span in (ok, failed):
        assert "hunter2" not in _everything(span) and "alice" not in _everything(span)


def _everything(span: ReadableSpan) -> str:
    """Every string a span would export."""
    parts = [span.name, str(span.status.description), *map(str, (span.attributes or {}).values())]
    parts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    return " ".join(parts)
