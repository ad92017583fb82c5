"""The HTTP face of ``ragline serve`` (FastAPI on uvicorn): routes, tokens, request validation, body limits and
load shedding; the work belongs to ``flows.serve.Service``. The schema is at ``/openapi.json``.

Every answer is JSON; an error is ``{"error": "...", "status": N}`` whose message names the field or reason.
With a token configured (``serve.token_env``, ``serve.tenant_tokens``) every route but the probes needs
``Authorization: Bearer`` (``/readyz`` shows its figures to the operator only). 503 while warming up or
stopping; 429 with ``Retry-After`` when a queue is full.

- ``POST /v1/runs``: ``application/pdf`` body (query ``source``, ``filename``), or JSON ``{"url": ...}`` /
  ``{"source": ..., "ids": [...]}``: 202 with the run (the same run for an identical request).
- ``GET /v1/runs/{run_id}``: the run's record.
- ``POST /v1/search``: the best chunks for a query (the same JSON as ``ragline search --json``, under ``hits``).
- ``GET /v1/status``, ``GET /v1/quarantine``: as ``ragline status --json`` and ``quarantine list --json``.
- ``GET /metrics``: Prometheus metrics (``telemetry.metrics``).
- ``GET /healthz`` (alive), ``GET /readyz`` (200 once warm, else 503; the queue's numbers for the operator).
"""

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flows import metrics
from flows.access import Principal, Unauthorized
from flows.serve import Forbidden, Service
from flows.snapshot import watch_snapshots
from flows.trigger import Admitted, BadRequest, TriggerRequest, parse_json_request, pdf_request
from flows.urlguard import UrlRefused
from telemetry.metrics import HTTP_REQUESTS, HTTP_SECONDS, SHED
from vectorstore.search import SearchFilter

log = logging.getLogger(__name__)

JSON_MAX_BYTES = 1024 * 1024
"""Bodies of every route but a posted PDF: a search or a trigger is a few hundred bytes."""
_PDF_TYPES = ("application/pdf", "application/octet-stream")


class SearchBody(BaseModel):
    """A search: as ``ragline search``'s options."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000, description="What to look for.")
    k: int = Field(default=5, ge=1, le=1000, description="Results to return.")
    mode: Literal["hybrid", "vector"] | None = Field(default=None, description="Override search.mode.")
    tenant: str | None = Field(default=None, description="Only this tenant's chunks (a tenant's token: its own).")
    source: str | None = Field(default=None, description="Only this source.")
    filters: dict[str, Any] | None = Field(default=None, description="Documents whose metadata contains these.")
    exact: bool = Field(default=False, description="Exact (sequential) vector search instead of the HNSW index.")
    ef_search: int | None = Field(default=None, ge=1, le=1000, description="Override search.ef_search.")


class TriggerBody(BaseModel):
    """A JSON trigger (documented here; parsed by ``flows.trigger.parse_json_request``)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="An http(s) URL of a PDF the service fetches.")
    source: str | None = Field(default=None, description="Source to ingest into (default: the inbox source).")
    ids: list[str] | None = Field(default=None, description="Records of ``source`` (none: an incremental sync).")


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status, headers=headers)


def _field_errors(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


class BodyLimit:
    """Refuse a request body over its route's limit (413, from ``Content-Length`` before reading, else while
    streaming) or slower than ``serve.read_timeout`` as a whole (408): a client cannot hold a worker or memory
    by sending slowly or much."""

    def __init__(self, app: ASGIApp, *, pdf_max: int, timeout: float) -> None:
        self.app = app
        self.pdf_max = pdf_max
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.pdf_max if scope["path"].rstrip("/") == "/v1/runs" else JSON_MAX_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            answer = _error(413, f"the body exceeds {limit} bytes", {"Connection": "close"})
            await answer(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout
        received = 0

        async def limited() -> Message:
            nonlocal received
            left = deadline - time.monotonic()
            try:
                with anyio.fail_after(max(left, 0.001)):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, "the body did not arrive in time (serve.read_timeout)") from None
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"the body exceeds {limit} bytes")
            return message

        await self.app(scope, limited, send)


class RequestLimit:
    """At most ``limit`` requests in progress; beyond, 503 with ``Retry-After`` at once (JSON, as every answer),
    before a body is read. ``/healthz`` is never refused: a busy service is alive."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            answer = _error(503, f"too many requests in progress ({self.limit})", {"Retry-After": "1"})
            await answer(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


class RequestMetrics:
    """Count and time every answer by route template (``/v1/runs/{run_id}``, not each id) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            route = scope.get("route")
            template = str(getattr(route, "path", "unmatched"))
            HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
            HTTP_SECONDS.labels(template).observe(time.perf_counter() - started)
            if status in (429, 503):
                SHED.labels(_what(scope["path"]), str(status)).inc()


def _what(path: str) -> str:
    return "search" if path.startswith("/v1/search") else "run" if path.startswith("/v1/runs") else "other"


class SearchGate:
    """At most ``concurrency`` searches at once and ``queue`` waiting; beyond, 429 at once (load shedding)."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.capacity = concurrency + queue
        self.in_flight = 0

    async def run(self, func: Callable[[], Any]) -> Any:
        if self.in_flight >= self.capacity:
            raise HTTPException(429, f"too many searches in flight ({self.capacity})", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            return await anyio.to_thread.run_sync(func, limiter=self.limiter)
        finally:
            self.in_flight -= 1


def create_app(service: Service, *, on_started: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    """The service's ASGI app. Its lifespan warms the service in the background (503 until ready) and drains
    it at the stop; ``on_started`` runs once the lifespan has begun (the CLI starts the Prefect runner)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.warm_in_background()
        if on_started is not None:
            await on_started()
        yield
        await anyio.to_thread.run_sync(service.drain)

    app = FastAPI(
        title="ragline",
        summary="On-demand ingestion, search and operations of a warm ragline service.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    settings = service.settings
    app.add_middleware(BodyLimit, pdf_max=settings.max_body_bytes, timeout=settings.read_timeout)
    app.add_middleware(RequestLimit, limit=settings.max_connections)  # shed before anything else
    app.add_middleware(RequestMetrics)  # outermost: every answer counted, shed ones included
    gate = SearchGate(settings.search_concurrency, settings.search_queue)
    metrics.watch_service(
        lambda: service.book.stats()["queued"], lambda: service.book.stats()["running"], lambda: gate.in_flight
    )
    watch_snapshots(service.services.settings.snapshots)  # snapshot age and size, read when scraped

    # -- errors ----------------------------------------------------------------------------------------------

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), dict(err.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _field_errors(err))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return _error(err.status, str(err))

    @app.exception_handler(UrlRefused)
    async def url_refused(request: Request, err: UrlRefused) -> JSONResponse:
        return _error(err.status, str(err))

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, err: Forbidden) -> JSONResponse:
        return _error(403, str(err))

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return _error(500, f"internal error: {type(err).__name__} (see the service's log)")

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, err: Unauthorized) -> JSONResponse:
        return _error(401, str(err), {"WWW-Authenticate": "Bearer"})

    # -- dependencies ------------------------------------------------------------------------------------

    def principal(request: Request) -> Principal:
        return service.tokens.authenticate(request.headers.get("Authorization"))

    def ready() -> None:
        unavailable = service.book.unavailable()
        if unavailable is not None:
            raise HTTPException(unavailable.status, unavailable.reason, {"Retry-After": str(unavailable.retry_after)})

    Caller = Annotated[Principal, Depends(principal)]

    # -- probes ------------------------------------------------------------------------------------------

    @app.get("/healthz", summary="Alive (no token needed).")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="200 once warm, 503 while warming up or stopping (the queue's figures: operator).")
    async def readyz(request: Request) -> JSONResponse:
        stats = service.book.stats()
        status = 200 if stats["ready"] else 503
        try:  # a probe needs no token; the figures do
            caller = service.tokens.authenticate(request.headers.get("Authorization"))
        except Unauthorized:
            return JSONResponse({"ready": stats["ready"]}, status_code=status)
        if not caller.operator:
            return JSONResponse({"ready": stats["ready"]}, status_code=status)
        if service.failure:
            stats["error"] = service.failure
        return JSONResponse(stats, status_code=status)

    @app.get("/metrics", summary="Prometheus metrics (the operator's token when tokens are configured).")
    async def prometheus_metrics(caller: Caller) -> Response:
        if not caller.operator:
            raise Forbidden("metrics cover every tenant: they need the operator's token (serve.token_env)")
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- runs --------------------------------------------------------------------------------------------

    @app.post(
        "/v1/runs",
        status_code=202,
        summary="Ingest a posted PDF, a URL, or records of a source, on the warm workers.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": TriggerBody.model_json_schema()},
                },
            }
        },
    )
    async def post_run(
        request: Request,
        caller: Caller,
        source: Annotated[str | None, Query(min_length=1, description="Source of a posted PDF.")] = None,
        filename: Annotated[str | None, Query(description="Name of a posted PDF (its title).")] = None,
    ) -> JSONResponse:
        ready()
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        default = service.default_source(caller)
        if content_type == "application/json":
            body = await request.body()
            trigger = parse_json_request(body, default)
        elif content_type in _PDF_TYPES:
            body = await request.body()
            if not body:
                raise BadRequest("the PDF body is empty")
            digest, path = await anyio.to_thread.run_sync(service.inbox.store, body, filename)
            trigger = pdf_request(digest, source or default, path.name)
        else:
            raise BadRequest(f"Content-Type must be application/pdf or application/json, not {content_type!r}", 415)
        trigger = TriggerRequest(
            trigger.kind, trigger.source, trigger.target, trigger.ids, trigger.filename, caller.tenant
        )
        result = await anyio.to_thread.run_sync(service.admit, caller, trigger)
        if not isinstance(result, Admitted):
            return _error(result.status, result.reason, {"Retry-After": str(result.retry_after)})
        run_id = result.record["run_id"]
        return JSONResponse(
            {**result.record, "duplicate": result.duplicate, "status_url": f"/v1/runs/{run_id}"},
            status_code=202,
            headers={"Location": f"/v1/runs/{run_id}"},
        )

    @app.get("/v1/runs/{run_id}", summary="A run's record: its state, counts and error.")
    async def get_run(run_id: str, caller: Caller) -> dict[str, Any]:
        record = service.run(caller, run_id)
        if record is None:
            raise HTTPException(404, "no such run (unknown, or older than serve.history runs)")
        return record

    # -- search and operations ---------------------------------------------------------------------------

    @app.post("/v1/search", summary="The best chunks for a query, on the warm query model.")
    async def search(body: SearchBody, caller: Caller) -> Response:
        ready()
        update: dict[str, Any] = {}
        if body.mode is not None:
            update["mode"] = body.mode
        if body.exact:
            update["exact"] = "always"
        if body.ef_search is not None:
            update["ef_search"] = body.ef_search
        settings = service.services.settings.search.model_copy(update=update)
        where = SearchFilter(source=body.source, tenant=body.tenant, metadata=body.filters or None)
        hits = await gate.run(lambda: service.search(caller, body.query, body.k, where, settings))
        return _json({"hits": [h.as_json() for h in hits]})

    @app.get("/v1/status", summary="What the store holds, per source and model generation (operator).")
    async def status(caller: Caller) -> Response:
        ready()
        return _json(await anyio.to_thread.run_sync(service.status, caller))

    @app.get("/v1/quarantine", summary="Documents that could not be ingested, and why (operator).")
    async def quarantine(caller: Caller) -> Response:
        ready()
        return _json(await anyio.to_thread.run_sync(service.quarantine, caller))

    return app


def _json(data: Any) -> Response:
    """As the CLI prints it (``default=str``: timestamps as Postgres text), so both paths answer alike."""
    return Response(json.dumps(data, default=str, ensure_ascii=False), media_type="application/json")
