"""The HTTP face of ``ragline serve``'s trigger endpoint (stdlib ``ThreadingHTTPServer``): routes, bearer token,
body limits; admission and the work itself belong to ``flows.serve.TriggerServer``.

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

import hmac
import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from flows.inbox import store_pdf
from flows.trigger import Admitted, BadRequest, TriggerRequest, parse_json_request, pdf_request

if TYPE_CHECKING:
    from flows.serve import TriggerServer

log = logging.getLogger(__name__)

_PDF_TYPES = ("application/pdf", "application/octet-stream")


class TriggerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], trigger: TriggerServer):
        self.trigger = trigger
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The stdlib prints tracebacks to stderr; ours go to the log, one line at warning level.
        log.warning("error answering %s", client_address[0] if client_address else "?", exc_info=True)


class TriggerHandler(BaseHTTPRequestHandler):
    server: TriggerHTTPServer
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
