"""Source errors, as a small hierarchy with a ``retryable`` flag: one retry layer decides by the flag."""

from __future__ import annotations


class SourceError(Exception):
    """A call to a source failed. ``retryable`` says whether trying again may succeed."""

    retryable = False

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class TransientError(SourceError):
    """Throttled (429), server error (5xx), reset or timed out: retried with backoff. ``reason`` is a short
    stable cause (``HTTP 503``, ``ReadTimeout``) that telemetry may carry where the message may not."""

    retryable = True

    def __init__(
        self, source: str, message: str, *, retry_after: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(source, message)
        self.retry_after = retry_after
        self.reason = reason


class RequestRejectedError(SourceError):
    """400/401/403/404 and the like: the request itself is wrong; surfaced at once with the provider's text."""

    def __init__(self, source: str, status: int, message: str) -> None:
        super().__init__(source, f"HTTP {status}: {message}")
        self.status = status


class CircuitOpenError(SourceError):
    """The source failed repeatedly; calls are refused until a probe succeeds."""


class MalformedPayloadError(SourceError):
    """The source answered, but not with what its API promises (bad JSON, missing fields)."""


class UnparseableBodyError(TransientError, MalformedPayloadError):
    """A 2xx answer whose body does not parse: usually a cut transfer or a proxy's page, so it is retried;
    once the attempts are spent it is reported as the malformed payload it is."""


class CursorError(SourceError):
    """A saved cursor that does not read as this source's cursor (edited by hand, or from another version):
    the sync stops and names the field, rather than resuming from a position it cannot trust."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(source, f"saved cursor: {field}: {problem}")
        self.field = field
