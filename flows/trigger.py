"""On-demand ingestion requests, free of I/O: what a request is, its idempotency key, and the run book that
admits requests into a bounded queue, hands them to warm workers and keeps their records for the status call.

Load shedding happens at admission: a full queue answers 429 with a ``Retry-After`` estimated from how long
recent runs took; a book that is not ready yet, or is shutting down, answers 503. An identical request (same
kind, source and content) gets the run already queued, running, or finished within the dedupe window, so a
client that retries after a lost answer does not ingest twice; a failed run is never handed back, so retrying
it tries again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from vectorstore.runs import RunStatus

RunKind = Literal["pdf", "url", "records"]


class RunState(StrEnum):
    """A request's state: its run's outcome (``RunStatus``, as recorded in the store) once it ran."""

    QUEUED = "queued"
    RUNNING = RunStatus.RUNNING.value
    COMPLETED = RunStatus.COMPLETED.value
    COMPLETED_WITH_QUARANTINE = RunStatus.COMPLETED_WITH_QUARANTINE.value
    FAILED = RunStatus.FAILED.value
    EXPIRED = "expired"
    """Not started within the queue timeout."""
    CANCELLED = "cancelled"
    """Still queued when the server shut down."""


FINAL_STATES: frozenset[RunState] = frozenset(
    {RunState.COMPLETED, RunState.COMPLETED_WITH_QUARANTINE, RunState.FAILED, RunState.EXPIRED, RunState.CANCELLED}
)
_NOT_REUSED: frozenset[RunState] = frozenset({RunState.FAILED, RunState.EXPIRED, RunState.CANCELLED})
MAX_IDS = 1000


class BadRequest(ValueError):
    """A request the endpoint refuses as malformed (400) or unprocessable (422); the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TriggerRequest:
    """What to ingest. ``target``: the sha256 of a posted file, or a URL; ``ids``: records of a source (none:
    an incremental sync of it)."""

    kind: RunKind
    source: str
    target: str = ""
    ids: tuple[str, ...] = ()
    filename: str | None = None
    tenant: str | None = None
    """The tenant whose token asked (None: the operator): only it may read the run."""

    @property
    def key(self) -> str:
        """Equal for requests that would ingest the same thing (the file name of a posted file does not
        matter: its content does)."""
        canonical = json.dumps(
            [self.kind, self.source, self.target, sorted(set(self.ids)), self.tenant], separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def as_json(self) -> dict[str, Any]:
        """Everything needed to run it again (the service's journal)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "ids": list(self.ids),
            "filename": self.filename,
            "tenant": self.tenant,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TriggerRequest:
        kind = data["kind"]
        if kind not in ("pdf", "url", "records"):
            raise ValueError(f"unknown request kind {kind!r}")
        return cls(
            kind,
            str(data["source"]),
            str(data.get("target", "")),
            tuple(str(i) for i in data.get("ids", ())),
            data.get("filename"),
            data.get("tenant"),
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.source}
        if self.kind == "pdf":
            out["sha256"] = self.target
            out["filename"] = self.filename
        elif self.kind == "url":
            out["url"] = self.target
        else:
            out["ids"] = list(self.ids)
        if self.tenant is not None:
            out["tenant"] = self.tenant
        return out


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_filename(name: str | None, fallback: str) -> str:
    """A file name that cannot escape its directory or surprise a shell: the last path component, odd
    characters replaced, ``.pdf`` kept; ``fallback`` when nothing usable is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _SAFE_NAME.sub("_", base).strip(" .")[:120]
    if not cleaned:
        cleaned = fallback
    return cleaned if cleaned.lower().endswith(".pdf") else f"{cleaned}.pdf"


def pdf_request(content_sha256: str, source: str, filename: str | None) -> TriggerRequest:
    return TriggerRequest("pdf", source, content_sha256, filename=safe_filename(filename, content_sha256[:16]))


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"url must be an absolute http(s) URL, got {url[:200]!r}", 422)
    return url


def _source_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where} must be a non-empty string")
    return value


def parse_json_request(body: bytes, default_source: str) -> TriggerRequest:
    """``{"url": URL[, "source": NAME]}`` or ``{"source": NAME[, "ids": [ID, ...]]}``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object with `url`, or `source` and optional `ids`")
    unknown = sorted(set(data) - {"url", "source", "ids"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; known: url, source, ids")
    if "url" in data:
        if "ids" in data:
            raise BadRequest("give either `url` or `ids`, not both")
        if not isinstance(data["url"], str):
            raise BadRequest("url must be a string")
        source = _source_name(data.get("source", default_source), "source")
        return TriggerRequest("url", source, check_url(data["url"]))
    if "source" not in data:
        raise BadRequest("give `url`, or `source` with optional `ids`")
    source = _source_name(data["source"], "source")
    ids = data.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str | int) and str(i) for i in ids):
        raise BadRequest("ids must be a list of non-empty strings")
    if len(ids) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids per request, got {len(ids)}", 413)
    return TriggerRequest("records", source, ids=tuple(dict.fromkeys(str(i) for i in ids)))


@dataclass
class RunRecord:
    id: str
    request: TriggerRequest
    submitted_at: float
    state: RunState = RunState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None
    store_run_id: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "state": self.state,
            "request": self.request.describe(),
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "counts": dict(self.counts),
            "error": self.error,
            "note": self.note,
            "store_run_id": self.store_run_id,
        }


@dataclass(frozen=True)
class Admitted:
    record: dict[str, Any]
    duplicate: bool


@dataclass(frozen=True)
class Rejected:
    status: Literal[429, 503]
    reason: str
    retry_after: int


def retry_after(queued: int, workers: int, mean_run_s: float | None, *, low: int = 1, high: int = 60) -> int:
    """Seconds until a slot is likely free: the queue ahead drained at the recent pace, clamped to
    ``[low, high]`` (no history yet: ``low``)."""
    if mean_run_s is None:
        return low
    estimate = mean_run_s * (queued + 1) / max(1, workers)
    return int(min(high, max(low, math.ceil(estimate))))


class RunBook:
    """Thread-safe admission, queue and records. ``clock`` (wall seconds) and ``new_id`` are seams for tests;
    ``on_final`` is told every record that reaches a final state (under the book's lock: keep it short)."""

    def __init__(
        self,
        queue_size: int,
        *,
        workers: int = 1,
        dedupe_seconds: float = 3600.0,
        queue_timeout: float = 300.0,
        history: int = 1000,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        on_final: Callable[[RunRecord], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self.workers = workers
        self.dedupe_seconds = dedupe_seconds
        self.queue_timeout = queue_timeout
        self.history = history
        self._clock = clock
        self._new_id = new_id
        self._on_final = on_final
        self._cond = threading.Condition()
        self._queue: deque[RunRecord] = deque()
        self._records: dict[str, RunRecord] = {}
        self._by_key: dict[str, str] = {}
        self._finished: deque[str] = deque()
        self._durations: deque[float] = deque(maxlen=20)
        self._running = 0
        self._ready = False
        self._closing = False

    # -- state of the book -------------------------------------------------------------------------------

    def set_ready(self) -> None:
        with self._cond:
            self._ready = True

    @property
    def ready(self) -> bool:
        with self._cond:
            return self._ready and not self._closing

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "ready": self._ready and not self._closing,
                "closing": self._closing,
                "queued": len(self._queue),
                "running": self._running,
                "queue_size": self.queue_size,
                "workers": self.workers,
            }

    def _mean_duration(self) -> float | None:
        return sum(self._durations) / len(self._durations) if self._durations else None

    # -- admission ---------------------------------------------------------------------------------------

    def unavailable(self) -> Rejected | None:
        """The 503 any request would get now (warming up, shutting down), checked before a body is read. A
        full queue is decided at ``submit``: a duplicate of a queued run still gets its run id."""
        with self._cond:
            return self._unavailable()

    def _unavailable(self) -> Rejected | None:
        if self._closing:
            return Rejected(503, "the server is shutting down", 30)
        if not self._ready:
            return Rejected(503, "the server is warming up (model and database)", 5)
        return None

    def _rejection(self) -> Rejected | None:
        unavailable = self._unavailable()
        if unavailable is not None:
            return unavailable
        if len(self._queue) >= self.queue_size:
            wait = retry_after(len(self._queue), self.workers, self._mean_duration())
            return Rejected(429, f"the queue is full ({self.queue_size} runs waiting)", wait)
        return None

    def submit(self, request: TriggerRequest, *, recovered: bool = False) -> Admitted | Rejected:
        """Admit ``request`` (or hand back its identical run). ``recovered``: a request admitted by an earlier
        process and not run, queued again at start whatever the queue holds (before the book is ready)."""
        with self._cond:
            self._expire()
            existing = self._reusable(request.key)
            if existing is not None:
                return Admitted(existing.as_json(), duplicate=True)
            rejection = None if recovered and not self._closing else self._rejection()
            if rejection is not None:
                return rejection
            record = RunRecord(self._new_id(), request, self._clock())
            self._records[record.id] = record
            self._by_key[request.key] = record.id
            self._queue.append(record)
            self._cond.notify()
            return Admitted(record.as_json(), duplicate=False)

    def _reusable(self, key: str) -> RunRecord | None:
        run_id = self._by_key.get(key)
        record = self._records.get(run_id) if run_id else None
        if record is None or record.state in _NOT_REUSED:
            return None
        if record.finished_at is not None and self._clock() - record.finished_at > self.dedupe_seconds:
            return None
        return record

    def _expire(self) -> None:
        now = self._clock()
        while self._queue and now - self._queue[0].submitted_at > self.queue_timeout:
            record = self._queue.popleft()
            self._close_record(record, RunState.EXPIRED, f"not started within {self.queue_timeout:g} s (queue timeout)")

    # -- workers -----------------------------------------------------------------------------------------

    def take(self, timeout: float | None = None) -> RunRecord | None:
        """The next run to execute, marked running; None once the book is closing (or after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closing:
                    return None
                self._expire()
                if self._queue:
                    record = self._queue.popleft()
                    record.state = RunState.RUNNING
                    record.started_at = self._clock()
                    self._running += 1
                    return record
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def attach(self, run_id: str, *, store_run_id: int | None = None, note: str | None = None) -> None:
        """Record facts learned while running (the store's run row, a note for the client)."""
        with self._cond:
            record = self._records[run_id]
            if store_run_id is not None:
                record.store_run_id = store_run_id
            if note is not None:
                record.note = note

    def finish(self, run_id: str, state: RunState | str, counts: dict[str, int], error: str | None = None) -> None:
        """Record how a run ended: ``state`` a final state (a ``RunStatus`` outcome from the worker)."""
        state = RunState(state)
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final state")
        with self._cond:
            record = self._records[run_id]
            if record.state is not RunState.RUNNING:
                raise ValueError(f"run {run_id} is {record.state}, not running")
            self._running -= 1
            record.counts = dict(counts)
            if record.started_at is not None:
                self._durations.append(max(0.0, self._clock() - record.started_at))
            self._close_record(record, state, error)
            self._cond.notify_all()

    def _close_record(self, record: RunRecord, state: RunState, error: str | None) -> None:
        record.state = state
        record.error = error
        record.finished_at = self._clock()
        if self._on_final is not None:
            self._on_final(record)
        self._finished.append(record.id)
        while len(self._finished) > self.history:
            old = self._records.pop(self._finished.popleft(), None)
            if old is not None and self._by_key.get(old.request.key) == old.id:
                del self._by_key[old.request.key]

    # -- readers and shutdown ----------------------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._cond:
            self._expire()
            record = self._records.get(run_id)
            return record.as_json() if record else None

    def close(self) -> list[str]:
        """Stop admitting and handing out runs; queued runs are cancelled (returns their ids). Running runs
        finish normally (``wait_idle``)."""
        with self._cond:
            self._closing = True
            cancelled = []
            while self._queue:
                record = self._queue.popleft()
                self._close_record(record, RunState.CANCELLED, "the server shut down before this run started")
                cancelled.append(record.id)
            self._cond.notify_all()
            return cancelled

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is running; False if some still are after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
