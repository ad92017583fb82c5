"""The resilient HTTP layer against a real HTTP server on 127.0.0.1; sleeps are injected and recorded."""

from __future__ import annotations

import email.utils

import pytest

from connectors.breaker import BreakerState, CircuitBreaker
from connectors.errors import CircuitOpenError, MalformedPayloadError, RequestRejectedError, TransientError
from connectors.http import HttpPolicy, ResilientClient, parse_retry_after, rate_limit_reset
from connectors.ratelimit import TokenBucket
from tests.support.httpserver import Reply, serve


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def client(url: str, fake: FakeTime, **policy: object) -> ResilientClient:
    return ResilientClient(
        "test",
        HttpPolicy.model_validate({"read_timeout": 2.0, **policy}),
        base_url=url,
        clock=fake.clock,
        wall_clock=fake.clock,
        sleep=fake.sleep,
        rng=lambda: 1.0,  # the top of each full-jitter interval: the exact ceilings are asserted
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("soon", None),
        (email.utils.formatdate(1000 + 42, usegmt=True), 42.0),
        (email.utils.formatdate(1000 - 42, usegmt=True), 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1000.0) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "10"}, None),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10"}, 10.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(2_000_000_030)}, 30.0),
        ({"X-HubSpot-RateLimit-Remaining": "0", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}, 10.0),
    ],
)
def test_rate_limit_reset(headers: dict[str, str], expected: float | None) -> None:
    assert rate_limit_reset(headers, now=2_000_000_000.0) == expected


def test_retry_after_is_honoured_and_5xx_back_off_with_full_jitter() -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route(
            "/x",
            [
                Reply(429, {"message": "slow down"}, {"Retry-After": "3"}),
                Reply(503, {"message": "busy"}),
                Reply(502, b"bad gateway"),
                Reply(200, {"ok": True}),
            ],
        )
        with client(srv.url, fake) as c:
            assert c.get_json("/x") == {"ok": True}
            assert fake.sleeps == [3.0, 1.0, 2.0]  # Retry-After as given; then ceilings 0.5 * 2^(n-1)
            assert (c.stats.requests, c.stats.retries, c.stats.throttled) == (4, 3, 1)
    assert len(srv.calls("/x")) == 4


def test_http_date_retry_after() -> None:
    fake = FakeTime(start=1_700_000_000.0)
    with serve() as srv:
        when = email.utils.formatdate(1_700_000_000 + 5, usegmt=True)
        srv.route("/x", [Reply(429, {}, {"Retry-After": when}), Reply(200, {"ok": 1})])
        with client(srv.url, fake) as c:
            c.get_json("/x")
    assert fake.sleeps == [5.0]


def test_connection_reset_and_slow_response_are_retried() -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route("/x", [Reply(reset=True), Reply(200, {}, delay=1.0), Reply(200, {"ok": 2})])
        with client(srv.url, fake, read_timeout=0.3) as c:
            assert c.get_json("/x") == {"ok": 2}
            assert c.stats.retries == 2


def test_attempt_budget_is_bounded_and_the_error_says_why() -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route("/x", [Reply(500, {"message": "database on fire"})])
        with client(srv.url, fake, max_attempts=3, breaker_threshold=100) as c, pytest.raises(TransientError) as err:
            c.get_json("/x")
    assert "HTTP 500" in str(err.value) and "database on fire" in str(err.value)
    assert len(srv.calls("/x")) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_non_retryable_errors_surface_at_once_with_the_provider_message(status: int) -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route("/x", [Reply(status, [{"message": "INVALID_SESSION_ID", "errorCode": "X"}])])
        with client(srv.url, fake) as c, pytest.raises(RequestRejectedError) as err:
            c.get_json("/x")
    assert err.value.status == status and "INVALID_SESSION_ID" in str(err.value)
    assert len(srv.calls("/x")) == 1 and fake.sleeps == []


def test_breaker_opens_fails_fast_then_probes_and_closes() -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route("/x", [Reply(500, {"message": "down"})])
        with client(srv.url, fake, max_attempts=2, breaker_threshold=3, breaker_reset_seconds=60) as c:
            with pytest.raises(TransientError):
                c.get_json("/x")  # 2 failures
            with pytest.raises(CircuitOpenError):
                c.get_json("/x")  # 1 more failure opens it; the retry is refused
            calls = len(srv.calls("/x"))
            assert calls == 3
            for _ in range(5):
                with pytest.raises(CircuitOpenError):
                    c.get_json("/x")
            assert len(srv.calls("/x")) == calls  # open: the source is not called at all
            assert c.breaker.state is BreakerState.OPEN

            fake.now += 61  # half-open: one probe goes out, and the source is back
            srv.route("/x", [Reply(200, {"ok": True})])
            assert c.get_json("/x") == {"ok": True}
            assert c.breaker.state.value == "closed"


def test_failed_probe_reopens_the_breaker() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker("s", threshold=2, reset_seconds=10, clock=fake.clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    fake.now += 10
    breaker.before_call()  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.opened_count == 2


@pytest.mark.parametrize(
    ("rate", "burst", "n", "expected_wait"), [(2.0, 1, 5, 2.0), (10.0, 5, 15, 1.0), (1.0, 3, 3, 0.0)]
)
def test_token_bucket_arithmetic(rate: float, burst: int, n: int, expected_wait: float) -> None:
    fake = FakeTime()
    bucket = TokenBucket(rate, burst, clock=fake.clock, sleep=fake.sleep)
    waited = sum(bucket.acquire() for _ in range(n))
    assert waited == pytest.approx(expected_wait)


def test_token_bucket_pause_until() -> None:
    fake = FakeTime()
    bucket = TokenBucket(100.0, 10, clock=fake.clock, sleep=fake.sleep)
    bucket.pause_until(fake.now + 7)
    assert bucket.acquire() == pytest.approx(7.0, abs=0.02)


def test_rate_is_never_exceeded_even_under_retries() -> None:
    """Real clock: 40 requests at 20/s, a third of them answered 503 and retried; the server's log of arrival
    times must never show more than rate * window + burst requests in any window."""
    rate, burst = 20.0, 2
    with serve() as srv:
        counter = {"n": 0}

        def flaky(_: object) -> Reply:
            counter["n"] += 1
            return Reply(503, {}) if counter["n"] % 3 == 0 else Reply(200, {"ok": 1})

        srv.route("/x", flaky)
        policy = HttpPolicy(rate_per_second=rate, burst=burst, backoff_base=0.01, breaker_threshold=1000)
        with ResilientClient("t", policy, base_url=srv.url) as c:
            for _ in range(40):
                c.get_json("/x")
        times = sorted(call.at for call in srv.calls("/x"))
    assert len(times) > 40  # retries happened
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t - start < 1.0)
        assert in_window <= rate * 1.0 + burst
    assert times[-1] - times[0] >= (len(times) - burst) / rate - 0.1


def test_a_cut_json_body_is_retried_and_then_reported_as_malformed() -> None:
    fake = FakeTime()
    with serve() as srv:
        srv.route("/x", [Reply(200, b'{"results": [{"id": 1'), Reply(200, {"results": []})])
        assert client(srv.url, fake).get_json("/x") == {"results": []}
        srv.route("/garbage", [Reply(200, b"<html>proxy error</html>")])
        with pytest.raises(MalformedPayloadError, match="not JSON") as err:
            client(srv.url, fake, max_attempts=3).get_json("/garbage")
        assert "proxy error" in str(err.value)
        assert len(srv.calls("/garbage")) == 3
