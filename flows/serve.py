"""The on-demand trigger endpoint of ``ragline serve``: a small HTTP server (stdlib ``ThreadingHTTPServer``) in
front of warm worker threads that ingest through the process's warm model and their own database connections.

Why not a Prefect flow run per request: measured on this 2-core machine (``bench/trigger_latency.py``,
docs/benchmarks.md), a warm one-page ingestion took 1.14 s at the median as an ``ingest-pdf`` flow run and
0.30 s directly: the flow run's API round trips (flow run, task runs, states, artifacts, logs) cost more than
the work itself, against a 2 s target. So the on-demand path ingests directly through the warm ``Pipeline`` and
records each run in the store's ``runs`` table (``ragline status`` shows it); scheduled batch runs remain
Prefect flow runs (``flows.deployments``), visible in the UI.

The HTTP routes are in ``flows.serve_http``, posted files and downloads in ``flows.inbox``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.base import SourceDocument
from connectors.pdf import PdfConnector
from connectors.registry import PdfSourceSettings
from embedding.pool import EmbeddingPool
from flows import sources
from flows.counts import Counts
from flows.inbox import download, redact_url
from flows.pipeline import Pipeline
from flows.planning import resolve_source
from flows.runs import Run, outcome, recorded_run
from flows.runtime import Services
from flows.serve_http import TriggerHandler, TriggerHTTPServer
from flows.settings import ConfigError, ServeSettings
from flows.trigger import BadRequest, RunBook, RunRecord, TriggerRequest
from vectorstore import ledger
from vectorstore.db import first_line
from vectorstore.runs import RunStatus

log = logging.getLogger(__name__)

STATE_FILE = "serve.json"


class ServeError(RuntimeError):
    """The endpoint cannot start (address in use, bad token setting, model or database not ready)."""


# -- state file -----------------------------------------------------------------------------------------------


def read_state(home: Path) -> dict[str, Any] | None:
    """The running endpoint's ``{"pid", "url"}`` under ``home``, if one wrote it."""
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state else None


# -- execution ----------------------------------------------------------------------------------------------


def ingest_documents(
    pipeline: Pipeline, source: str, documents: list[SourceDocument], counts: Counts, started: Callable[[Run], None]
) -> None:
    """Plan ``documents`` against the ledger (unchanged ones cost nothing) and ingest the rest, recorded as a
    run of ``source``; ``started`` is told the run once it exists. Nothing is deleted: a request names what to
    add, not the whole source."""
    ref = resolve_source(pipeline.conn, pipeline.settings, source, "pdf")
    with recorded_run(pipeline, ref, counts=counts) as run:
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
        self._http: TriggerHTTPServer | None = None
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
            http = TriggerHTTPServer((self.settings.host, self.settings.port), TriggerHandler, self)
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
            Pipeline(conn, svc.settings, svc.embedder, parser=svc.parser).model_id()
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
                    self._execute(Pipeline(conn, svc.settings, svc.embedder, parser=svc.parser), record, counts)
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
