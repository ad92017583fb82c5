"""The one resilient HTTP layer every remote source goes through.

Per attempt: circuit breaker check, a token from the source's bucket (so retries count against the rate),
a concurrency slot, then the request with connect/read timeouts. 429, 5xx, resets and timeouts are retried
by tenacity with exponential backoff and full jitter ("Exponential Backoff And Jitter", AWS Architecture
Blog, 2015), except that a ``Retry-After`` (seconds or HTTP-date) is honoured as given; providers'
rate-limit headers pause the bucket until their reset. Other 4xx are surfaced at once with the provider's
message. Clock, sleep and randomness are injectable.

What operators see (``telemetry.metrics``, labelled by source): every attempt by status, retries, throttling
answers and the seconds spent waiting, the breaker's state; and one OpenTelemetry client span per logical call
(``request``/``get_json``/``post_json``, all its attempts) with each retry as an event. Spans carry the URL
without query string or credentials and no provider message: secrets never leave in telemetry.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx
import tenacity
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from pydantic import BaseModel, ConfigDict, Field

from connectors.breaker import CircuitBreaker
from connectors.errors import CircuitOpenError, RequestRejectedError, TransientError, UnparseableBodyError
from connectors.ratelimit import TokenBucket
from telemetry.metrics import SOURCE_REQUESTS, SOURCE_RETRIES, SOURCE_THROTTLED, SOURCE_WAIT_SECONDS

log = logging.getLogger(__name__)
# A proxy until telemetry.tracing installs a provider (when OTEL_EXPORTER_OTLP_ENDPOINT is set): a no-op till then.
_tracer = trace.get_tracer("ragline.connectors")

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


class HttpPolicy(BaseModel):
    """Resilience settings of one source. The attempt budget is the whole story: no outer retry loop."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for response data.")
    max_attempts: int = Field(default=6, ge=1, le=50, description="Attempts per request, the first included.")
    backoff_base: float = Field(default=0.5, gt=0, description="First backoff ceiling in seconds (doubles).")
    backoff_max: float = Field(default=60.0, gt=0, description="Largest backoff ceiling in seconds.")
    max_retry_after: float = Field(
        default=300.0, gt=0, description="A Retry-After longer than this is capped (and logged)."
    )
    rate_per_second: float | None = Field(default=None, gt=0, description="Requests per second, retries included.")
    burst: int = Field(default=1, ge=1, description="Requests allowed back to back before the rate applies.")
    max_concurrency: int = Field(default=4, ge=1, description="Requests in flight at once to this source.")
    breaker_threshold: int = Field(default=5, ge=1, description="Consecutive failures that open the circuit.")
    breaker_reset_seconds: float = Field(default=60.0, gt=0, description="Open time before one probe call.")
    shared_quota: str | None = Field(
        default=None,
        min_length=1,
        description="Name of a quota shared by every run and source calling the same API account: with "
        "Prefect, each request also takes a slot of a global rate limit of that name (rate_per_second, burst).",
    )


@dataclass
class HttpStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def rate_limit_reset(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until the provider's quota resets when its headers say none is left, else None.

    Understands the common ``X-RateLimit-Remaining``/``X-RateLimit-Reset`` pair (reset as epoch seconds or
    as a delta) and HubSpot's ``X-HubSpot-RateLimit-Remaining``/``-Interval-Milliseconds``.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get("x-hubspot-ratelimit-remaining") == "0":
        interval = lower.get("x-hubspot-ratelimit-interval-milliseconds")
        return float(interval) / 1000 if interval and interval.isdigit() else 1.0
    if lower.get("x-ratelimit-remaining") == "0" and lower.get("x-ratelimit-reset"):
        try:
            reset = float(lower["x-ratelimit-reset"])
        except ValueError:
            return None
        return max(0.0, reset - now) if reset > 1e9 else reset
    return None


def span_url(url: httpx.URL) -> str:
    """``url`` as spans may carry it: no query string (tokens and cursors travel there), fragment or userinfo."""
    return str(url.copy_with(query=None, fragment=None, userinfo=b""))


def transport_status(err: httpx.TransportError) -> str:
    """The ``status`` label of an attempt that got no HTTP answer."""
    if isinstance(err, httpx.TimeoutException):
        return "timeout"
    if isinstance(err, httpx.ConnectError):
        return "connect"
    return "transport"


def throttling(status: int, retry_after: str | None) -> bool:
    """The source pushed back on our rate: 429, or 503 with a Retry-After (how several APIs say "slow down");
    a bare 503 is an outage, counted as a failure by the breaker instead."""
    return status == 429 or (status == 503 and retry_after is not None)


class _SourceMetrics:
    """The source's metric children, looked up once per client (``labels`` takes a lock and hashes the labels);
    one child per status met, created on first use."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.retries = SOURCE_RETRIES.labels(source)
        self.throttled = SOURCE_THROTTLED.labels(source)
        self.waited = {why: SOURCE_WAIT_SECONDS.labels(source, why) for why in ("backoff", "bucket", "quota")}
        self._requests: dict[str, Any] = {}

    def request(self, status: str) -> None:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = SOURCE_REQUESTS.labels(self.source, status)
        child.inc()


def _provider_message(response: httpx.Response) -> str:
    """The provider's own error text, shortened: what an operator needs to fix a rejected request."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Salesforce answers [{"message": ..., "errorCode": ...}]
    if isinstance(body, dict):
        for key in ("message", "error_description", "error", "errorMessage", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("info") or value.get("message")  # MediaWiki: {"error": {"info": ...}}
            if value:
                return str(value)[:300]
    return str(body)[:300]


class ResilientClient:
    """An httpx client wrapped in the policy. One per source, shared by its threads."""

    def __init__(
        self,
        source: str,
        policy: HttpPolicy,
        *,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        gate: Callable[[], None] | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """``tracer`` is a seam for tests; by default spans go to the process's provider (none: no-op)."""
        self.source = source
        self.policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng
        self.stats = HttpStats()
        self._metrics = _SourceMetrics(source)
        self._tracer = tracer or _tracer
        # Called before each attempt, blocking until a quota shared with other processes allows it (given by
        # the orchestration layer; a connector does not know who else calls its API).
        self.gate = gate
        self.breaker = CircuitBreaker(source, policy.breaker_threshold, policy.breaker_reset_seconds, clock=clock)
        self.bucket = (
            TokenBucket(policy.rate_per_second, policy.burst, clock=clock, sleep=sleep)
            if policy.rate_per_second
            else None
        )
        self._slots = threading.BoundedSemaphore(policy.max_concurrency)
        self._http = httpx.Client(
            base_url=base_url,
            headers=dict(headers or {}),
            transport=transport,
            timeout=httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout),
            follow_redirects=True,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ResilientClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            if exc.retry_after > self.policy.max_retry_after:
                log.warning(
                    "%s asked to wait %.0f s; capped at %.0f s",
                    self.source,
                    exc.retry_after,
                    self.policy.max_retry_after,
                )
            return float(min(exc.retry_after, self.policy.max_retry_after))
        ceiling = min(self.policy.backoff_max, self.policy.backoff_base * 2 ** (state.attempt_number - 1))
        return float(self._rng() * ceiling)  # full jitter

    def _pause(self, seconds: float) -> None:
        self.stats.waited_seconds += seconds
        self.stats.retries += 1
        self._metrics.retries.inc()
        self._metrics.waited["backoff"].inc(seconds)
        self._sleep(seconds)

    def _retry_event(self, state: tenacity.RetryCallState) -> None:
        """Each retry as an event of the call's span: which attempt failed, how long until the next, and why
        (the error's first words: ``HTTP 429``, ``ReadTimeout``; never the provider's message)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        exc = state.outcome.exception() if state.outcome else None
        reason = getattr(exc, "reason", None) or type(exc).__name__
        wait = state.next_action.sleep if state.next_action else 0.0
        span.add_event(
            "retry",
            {"attempt": state.attempt_number, "wait_seconds": float(wait), "reason": str(reason)},
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; returns a 2xx/3xx response or raises a ``SourceError``."""
        return self._call(self._attempt, method, url, **kwargs)

    def get_json(self, url: str, **kwargs: Any) -> Any:
        return self._call(self._json_attempt, "GET", url, **kwargs)

    def post_json(self, url: str, **kwargs: Any) -> Any:
        return self._call(self._json_attempt, "POST", url, **kwargs)

    def _call(self, attempt: Callable[..., T], method: str, url: str, **kwargs: Any) -> T:
        """One logical call, all its attempts, in one client span (a no-op span without a tracer provider)."""
        with self._tracer.start_as_current_span(
            method, kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False
        ) as span:
            if span.is_recording():
                self._describe(span, method, url)
            try:
                return self._retrying()(attempt, method, url, **kwargs)
            except Exception as err:
                # The class only: messages may quote the provider, and the logs have them.
                span.set_attribute("error.type", type(err).__name__)
                span.set_status(StatusCode.ERROR, type(err).__name__)
                raise

    def _describe(self, span: Span, method: str, url: str) -> None:
        full = self._http.build_request(method, url).url  # base_url merged as httpx merges it
        span.set_attributes(
            {
                "http.request.method": method,
                "url.full": span_url(full),
                "server.address": full.host,
                "ragline.source": self.source,
            }
        )
        if full.port is not None:
            span.set_attribute("server.port", full.port)

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.max_attempts),
            wait=self._backoff,
            retry=tenacity.retry_if_exception_type(TransientError),
            before_sleep=self._retry_event,
            sleep=self._pause,
            reraise=True,
        )

    def _json_attempt(self, method: str, url: str, **kwargs: Any) -> Any:
        """One attempt that must yield JSON. A 2xx body that does not parse is most often a transfer cut
        short or a proxy's error page, so it is retried within the same attempt budget; if every attempt
        gets one, the source is sending garbage and the run says so."""
        response = self._attempt(method, url, **kwargs)
        try:
            return response.json()
        except ValueError as err:
            message = f"response of {method} {response.request.url.path} is not JSON ({err}): {response.text[:80]!r}"
            raise UnparseableBodyError(self.source, message, reason="unparseable body") from err

    def _attempt(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.breaker.before_call()
        if self.gate is not None:
            started = self._clock()
            self.gate()
            self._metrics.waited["quota"].inc(max(0.0, self._clock() - started))
        if self.bucket is not None:
            waited = self.bucket.acquire()
            self.stats.waited_seconds += waited
            if waited:
                self._metrics.waited["bucket"].inc(waited)
        with self._slots:
            self.stats.requests += 1
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as err:  # timeouts included
                self.breaker.record_failure()
                self._metrics.request(transport_status(err))
                raise TransientError(
                    self.source, f"{type(err).__name__} on {method} {url}: {err}", reason=type(err).__name__
                ) from err
        status = response.status_code
        self._metrics.request(str(status))
        trace.get_current_span().set_attribute("http.response.status_code", status)
        reset = rate_limit_reset(response.headers, self._wall_clock())
        if reset is not None and self.bucket is not None:
            self.bucket.pause_until(self._clock() + reset)
        if status in RETRYABLE_STATUS:
            header = response.headers.get("Retry-After")
            retry_after = parse_retry_after(header, self._wall_clock())
            if throttling(status, header):
                self.stats.throttled += 1
                self._metrics.throttled.inc()
            if status == 429:
                self.breaker.record_throttled()
                if retry_after is None:
                    retry_after = reset
            else:
                self.breaker.record_failure()
            raise TransientError(
                self.source,
                f"HTTP {status} on {method} {response.request.url.path}: {_provider_message(response)}",
                retry_after=retry_after,
                reason=f"HTTP {status}",
            )
        self.breaker.record_success()
        if status >= 400:
            raise RequestRejectedError(self.source, status, _provider_message(response))
        return response


class HttpSource:
    """What a remote connector answers through the client it owns: request counts, closing, ``with``."""

    client: ResilientClient

    @property
    def stats(self) -> HttpStats:
        return self.client.stats

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CircuitOpenError",
    "HttpPolicy",
    "HttpSource",
    "HttpStats",
    "ResilientClient",
    "parse_retry_after",
    "rate_limit_reset",
    "span_url",
]
