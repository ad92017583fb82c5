"""The on-demand trigger endpoint of ``ragline serve``: a small HTTP server (stdlib ``ThreadingHTTPServer``) in
front of warm worker threads that ingest through the process's warm model and their own database connections.

Why not a Prefect flow run per request: measured on this 2-core machine (``bench/trigger_latency.py``,
docs/benchmarks.md), a warm one-page ingestion took 1.14 s at the median as an ``ingest-pdf`` flow run and
0.30 s directly: the flow run's API round trips (flow run, task runs, states, artifacts, logs) cost more than
the work itself, against a 2 s target. So the on-demand path ingests directly through the warm ``Pipeline`` and
records each run in the store's ``runs`` table (``ragline status`` shows it); scheduled batch runs remain
Prefect flow runs (``flows.deployments``), visible in the UI.

API (JSON answers; ``Authorization: Bearer`` when ``serve.token_env`` is set):

- ``POST /v1/runs`` with ``Content-Type: application/pdf`` (query ``source``, ``filename``): ingest the posted
  file, stored content-addressed under ``RAGLINE_HOME/inbox``;
  with ``application/json``: ``{"url": URL}`` (fetched by the worker) or ``{"source": NAME, "ids": [...]}``.
  202 with ``run_id``; an identical request gets the same run; 429 + ``Retry-After`` when the queue is full;
  503 while warming up or shutting down; 413 over ``serve.max_body_bytes``; 408 when the body is slower than
  ``serve.read_timeout``.
- ``GET /v1/runs/{run_id}``: the run record (``state``: queued, running, completed,
  completed_with_quarantine, failed, expired, cancelled).
- ``GET /healthz`` (alive), ``GET /readyz`` (200 once warm, else 503) with the queue's numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from connectors.base import SourceDocument
from connectors.pdf import PdfConnector
from connectors.registry import PdfSourceSettings
from embedding.pool import EmbeddingPool
from flows import sources
from flows.counts import Counts
from flows.pipeline import Pipeline
from flows.planning import resolve_source
from flows.runs import Run, outcome, recorded_run
from flows.runtime import Services
from flows.settings import ConfigError, ServeSettings
from flows.trigger import (
    Admitted,
    BadRequest,
    RunBook,
    RunRecord,
    TriggerRequest,
    parse_json_request,
    pdf_request,
    safe_filename,
)
from vectorstore import ledger
from vectorstore.db import first_line
from vectorstore.runs import RunStatus

log = logging.getLogger(__name__)

STATE_FILE = "serve.json"
_PDF_TYPES = ("application/pdf", "application/octet-stream")


class ServeError(RuntimeError):
    """The endpoint cannot start (address in use, bad token setting, model or database not ready)."""


# -- files and state ------------------------------------------------------------------------------------------


def store_pdf(root: Path, data: bytes, filename: str | None) -> tuple[str, Path]:
    """Store ``data`` once per content under ``root/<sha[:2]>/<sha>/<name>`` (the first name posted is kept,
    so titles read well); returns (sha256, path). Written to a temporary name and renamed: a reader never
    sees half a file."""
    digest = hashlib.sha256(data).hexdigest()
    folder = root / digest[:2] / digest
    existing = sorted(folder.glob("*.pdf")) if folder.is_dir() else []
    if existing:
        return digest, existing[0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe_filename(filename, digest[:16])
    tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.part"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return digest, path


def read_state(home: Path) -> dict[str, Any] | None:
    """The running endpoint's ``{"pid", "url"}`` under ``home``, if one wrote it."""
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state else None


def redact_url(url: str) -> str:
    """A URL fit for messages: no credentials, no query (tokens often travel there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def download(url: str, dest_root: Path, *, max_bytes: int, timeout: float) -> tuple[str, Path]:
    """Fetch ``url`` (redirects followed, size capped while streaming) into the content-addressed store."""
    where = redact_url(url)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url, headers={"Accept": "application/pdf"}) as answer,
        ):
            if answer.status_code != 200:
                raise DownloadError(f"GET {where}: HTTP {answer.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in answer.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(f"GET {where}: larger than serve.max_body_bytes ({max_bytes} bytes)")
                chunks.append(chunk)
    except httpx.HTTPError as err:
        raise DownloadError(f"GET {where}: {type(err).__name__}: {first_line(err)}") from err
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return store_pdf(dest_root, b"".join(chunks), name or None)


class DownloadError(RuntimeError):
    pass


# -- execution ----------------------------------------------------------------------------------------------


def ingest_documents(
    pipeline: Pipeline, source: str, documents: list[SourceDocument], counts: Counts, started: Callable[[Run], None]
) -> None:
    """Plan ``documents`` against the ledger (unchanged ones cost nothing) and ingest the rest, recorded as a
    run of ``source``; ``started`` is told the run once it exists. Nothing is deleted: a request names what to
    add, not the whole source."""
    ref = resolve_source(pipeline.conn, pipeline.settings, source, "pdf")
    with recorded_run(pipeline.conn, ref, counts=counts) as run:
        started(run)
        planned = pipeline.plan(ref, documents, lambda _: False, only=[d.external_id for d in documents])
        run.counts.merge(planned.counts)
        try:
            run.counts.merge(pipeline.ingest(ref, planned.work, planned_at=planned.planned_at))
        finally:
            pipeline.finish_load()


class TriggerServer:
    """Bind, warm, serve, shut down. ``bind`` answers 503 until ``warm`` has loaded the model, opened the
    database and started the workers."""

    def __init__(self, services: Services, settings: ServeSettings | None = None, *, book: RunBook | None = None):
        self.services = services
        self.settings = settings or services.settings.serve
        s = self.settings
        self.book = book or RunBook(
            s.queue_size,
            workers=s.workers,
            dedupe_seconds=s.dedupe_seconds,
            queue_timeout=s.queue_timeout,
            history=s.history,
        )
        self.inbox = services.settings.home / "inbox"
        self.token = self._token()
        self._http: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.url = ""

    def _token(self) -> str | None:
        name = self.settings.token_env
        if name is None:
            return None
        token = os.environ.get(name, "")
        if not token:
            raise ConfigError(f"serve.token_env names {name}, which is not set in the environment")
        return token

    # -- life cycle --------------------------------------------------------------------------------------

    def bind(self) -> str:
        """Listen (answering 503 until warm) and record the URL in ``RAGLINE_HOME/serve.json``."""
        try:
            http = _HTTPServer((self.settings.host, self.settings.port), _Handler, self)
        except OSError as err:
            raise ServeError(
                f"cannot listen on {self.settings.host}:{self.settings.port} (serve.host/serve.port): {err.strerror}"
            ) from err
        self._http = http
        host, port = str(http.server_address[0]), int(http.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        thread = threading.Thread(target=http.serve_forever, name="trigger-http", daemon=True)
        thread.start()
        self._threads.append(thread)
        home = self.services.settings.home
        home.mkdir(parents=True, exist_ok=True)
        (home / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "url": self.url}))
        return self.url

    def warm(self) -> None:
        """Load the model and open the database before the endpoint says ready: the first request must not
        pay for either."""
        svc = self.services
        embedder = svc.embedder
        if isinstance(embedder, EmbeddingPool):
            embedder.start()
            embedder.wait_ready(self.settings.ready_timeout)
        embedder.embed(["warm up the model"])
        ledger.ensure_source(svc.conn, self.settings.inbox_source, "pdf")  # migrates; fails on a kind clash
        with svc.pool.connection() as conn:  # the pool open and the generation registered before ready
            Pipeline(conn, svc.settings, svc.embedder).model_id()
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"trigger-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.book.set_ready()

    def shutdown(self, grace: float = 60.0) -> None:
        """Refuse new requests (503), cancel queued runs, let running ones finish (up to ``grace`` s), then
        stop listening and close the workers' connections."""
        cancelled = self.book.close()
        if cancelled:
            log.warning("shutting down: %d queued run(s) cancelled", len(cancelled))
        if not self.book.wait_idle(grace):
            log.warning("shutting down: runs still running after %.0f s are left unfinished", grace)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)
        state = read_state(self.services.settings.home)
        if state is not None and state.get("pid") == os.getpid():
            (self.services.settings.home / STATE_FILE).unlink(missing_ok=True)

    # -- admission (HTTP threads) ------------------------------------------------------------------------

    def check_target(self, request: TriggerRequest) -> None:
        """Refuse at once what would certainly fail: files into a source that is not a PDF source, records of
        a source that is not configured."""
        settings = self.services.settings
        configured = {s.name: s for s in settings.sources}
        if request.kind in ("pdf", "url"):
            found = configured.get(request.source)
            if found is not None and not isinstance(found, PdfSourceSettings):
                raise BadRequest(f"source {request.source!r} is a {found.kind} source: files go to PDF sources", 422)
            return
        try:
            settings.source(request.source)
        except ConfigError as err:
            raise BadRequest(str(err), 422) from err

    # -- workers -----------------------------------------------------------------------------------------

    def _work(self) -> None:
        """Take runs until the book closes. Each run borrows a pooled connection (checked before it is lent,
        replaced after a server restart, its session locks dropped when it comes back)."""
        svc = self.services
        while True:
            record = self.book.take()
            if record is None:
                return
            counts = Counts()
            try:
                with svc.pool.connection() as conn:
                    self._execute(Pipeline(conn, svc.settings, svc.embedder), record, counts)
            except Exception as err:  # noqa: BLE001 - a failed run is recorded in its record, the worker goes on
                message = f"{type(err).__name__}: {first_line(err)}"
                log.warning("on-demand run %s failed: %s", record.id, message)
                self.book.finish(record.id, RunStatus.FAILED, counts.as_dict(), message)
                continue
            self.book.finish(record.id, outcome(counts), counts.as_dict())

    def _execute(self, pipeline: Pipeline, record: RunRecord, counts: Counts) -> None:
        request = record.request

        def started(run: Run) -> None:
            self.book.attach(record.id, store_run_id=run.id)

        if request.kind == "pdf":
            path = self._stored(request.target)
            ingest_documents(pipeline, request.source, [self._document(path)], counts, started)
        elif request.kind == "url":
            s = self.settings
            _, path = download(request.target, self.inbox, max_bytes=s.max_body_bytes, timeout=s.download_timeout)
            doc = dataclasses.replace(self._document(path), external_id=request.target, uri=redact_url(request.target))
            ingest_documents(pipeline, request.source, [doc], counts, started)
        else:
            self._records(pipeline, record, counts, started)

    def _stored(self, digest: str) -> Path:
        found = sorted((self.inbox / digest[:2] / digest).glob("*.pdf"))
        if not found:
            raise FileNotFoundError(f"the posted file {digest} is gone from {self.inbox}")
        return found[0]

    def _document(self, path: Path) -> SourceDocument:
        return PdfConnector([], self.services.settings.pdf).document(path)

    def _records(self, pipeline: Pipeline, record: RunRecord, counts: Counts, started: Callable[[Run], None]) -> None:
        request = record.request
        source = self.services.settings.source(request.source)
        if isinstance(source, PdfSourceSettings):
            documents = [self._document(p) for p in self._pdf_ids(source, request.ids)]
            ingest_documents(pipeline, request.source, documents, counts, started)
            return
        if request.ids:
            self.book.attach(
                record.id,
                note=f"the {source.kind} connector fetches no single records: ran an incremental sync of "
                f"{request.source}, which brings every record changed since its cursor (these included)",
            )
        # Holding the source's Prefect slot like a scheduled run, so the two never overlap.
        run = sources.sync_source(pipeline, request.source, started=started)
        counts.merge(run.counts)

    def _pdf_ids(self, source: PdfSourceSettings, ids: tuple[str, ...]) -> list[Path]:
        """Record ids of a PDF source are files under its configured paths (nothing else may be read)."""
        roots = [Path(p).expanduser().resolve() for p in source.paths]
        wanted = (
            [Path(i) for i in ids] if ids else list(PdfConnector(roots, self.services.settings.pdf).discovery.files)
        )
        files = []
        for path in wanted:
            real = path.expanduser().resolve()
            if not any(real == root or real.is_relative_to(root) for root in roots):
                raise BadRequest(f"{path} is not under the paths of source {source.name!r}", 422)
            if not real.is_file():
                raise FileNotFoundError(f"no such file in source {source.name!r}: {path}")
            files.append(real)
        return files


# -- HTTP ---------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], trigger: TriggerServer):
        self.trigger = trigger
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The stdlib prints tracebacks to stderr; ours go to the log, one line at warning level.
        log.warning("error answering %s", client_address[0] if client_address else "?", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "ragline-trigger"

    def setup(self) -> None:
        # A slow client cannot hold a thread forever: socket reads time out (StreamRequestHandler.timeout).
        self.request.settimeout(self.server.trigger.settings.read_timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- answers -------------------------------------------------------------------------------------------

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None, *, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self._send(status, {"error": message, "status": status}, headers)

    def _authorized(self) -> bool:
        token = self.server.trigger.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode()):
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "a bearer token is required", {"WWW-Authenticate": "Bearer"}, close=True)
        return False

    # -- GET -----------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        trigger = self.server.trigger
        if path == "/healthz":
            self._send(HTTPStatus.OK, {"status": "alive"})
            return
        if not self._authorized():
            return
        if path == "/readyz":
            stats = trigger.book.stats()
            self._send(HTTPStatus.OK if stats["ready"] else HTTPStatus.SERVICE_UNAVAILABLE, stats)
        elif path.startswith("/v1/runs/"):
            record = trigger.book.get(path.removeprefix("/v1/runs/"))
            if record is None:
                self._error(HTTPStatus.NOT_FOUND, "no such run (unknown, or older than serve.history runs)")
            else:
                self._send(HTTPStatus.OK, record)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {path}")

    # -- POST ----------------------------------------------------------------------------------------------

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.rstrip("/") != "/v1/runs":
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {parts.path}", close=True)
            return
        if not self._authorized():
            return
        trigger = self.server.trigger
        unavailable = trigger.book.unavailable()
        if unavailable is not None:
            headers = {"Retry-After": str(unavailable.retry_after)}
            self._error(unavailable.status, unavailable.reason, headers, close=True)
            return
        body = self._body(trigger.settings.max_body_bytes)
        if body is None:
            return
        try:
            request = self._request(trigger, parts.query, body)
            trigger.check_target(request)
        except BadRequest as err:
            self._error(err.status, str(err))
            return
        outcome = trigger.book.submit(request)
        if not isinstance(outcome, Admitted):
            self._error(outcome.status, outcome.reason, {"Retry-After": str(outcome.retry_after)})
            return
        run_id = outcome.record["run_id"]
        self._send(
            HTTPStatus.ACCEPTED,
            {**outcome.record, "duplicate": outcome.duplicate, "status_url": f"/v1/runs/{run_id}"},
            {"Location": f"/v1/runs/{run_id}"},
        )

    def _body(self, limit: int) -> bytes | None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length", close=True)
            return None
        try:
            size = int(length)
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}", close=True)
            return None
        if size > limit or size < 0:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body exceeds {limit} bytes", close=True)
            return None
        try:
            body = self.rfile.read(size)
        except TimeoutError:
            self._error(HTTPStatus.REQUEST_TIMEOUT, "the body did not arrive in time (serve.read_timeout)", close=True)
            return None
        if len(body) != size:
            self._error(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {size} bytes", close=True)
            return None
        return body

    def _request(self, trigger: TriggerServer, query: str, body: bytes) -> TriggerRequest:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        default = trigger.settings.inbox_source
        if content_type == "application/json":
            return parse_json_request(body, default)
        if content_type not in _PDF_TYPES:
            raise BadRequest(f"Content-Type must be application/pdf or application/json, not {content_type!r}", 415)
        if not body:
            raise BadRequest("the PDF body is empty")
        params = parse_qs(query)
        source = params.get("source", [default])[0]
        if not source.strip():
            raise BadRequest("source must be a non-empty string")
        digest, path = store_pdf(trigger.inbox, body, params.get("filename", [None])[0])
        return pdf_request(digest, source, path.name)
