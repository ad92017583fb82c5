"""The warm service behind ``ragline serve``: on-demand ingestion on warm worker threads, searches on the warm
query model and the connection pool, and the operations views; the HTTP face is ``flows.serve_api``.

Why not a Prefect flow run per request: measured on this 2-core machine (``bench/trigger_latency.py``,
docs/benchmarks.md), a warm one-page ingestion took 1.14 s at the median as an ``ingest-pdf`` flow run and
0.30 s directly: the flow run's API round trips (flow run, task runs, states, artifacts, logs) cost more than
the work itself. So the on-demand path ingests directly through the warm ``Pipeline`` and records each run in
the store's ``runs`` table (``ragline status`` shows it); scheduled batch runs remain Prefect flow runs
(``flows.deployments``), visible in the UI.

Nothing admitted is lost: requests are journaled in the inbox (``flows.inbox``) until their run settles, and
a start queues again what the last process left. URLs are fetched through ``flows.urlguard``.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.base import SourceDocument
from connectors.pdf import PdfConnector
from connectors.registry import PdfSourceSettings
from embedding.backend_status import calibration_dir
from embedding.int8_export import export_in_background
from embedding.pool import EmbeddingPool
from flows import sources
from flows.access import Principal, Tokens, check_exposure
from flows.counts import Counts
from flows.inbox import Inbox
from flows.pipeline import Pipeline
from flows.planning import resolve_source
from flows.reports import quarantine_report, status_report
from flows.runs import Run, outcome, recorded_run
from flows.runtime import Services
from flows.serve_state import clear_state
from flows.settings import ConfigError, ServeSettings
from flows.trigger import Admitted, BadRequest, Rejected, RunBook, RunRecord, RunState, TriggerRequest
from flows.urlguard import Resolver, UrlPolicy, check, fetch_pdf, redact, system_resolver
from telemetry import tracing
from vectorstore import generations, ledger
from vectorstore.db import first_line
from vectorstore.runs import RunStatus
from vectorstore.search import SearchFilter, SearchHit
from vectorstore.settings import SearchSettings
from vectorstore.tenancy import source_tenant

log = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The service cannot start (address in use, model or database not ready)."""


class Forbidden(PermissionError):
    """A token acting beyond its tenant (403); the message says what it may do."""


# -- execution ----------------------------------------------------------------------------------------------


def ingest_documents(
    pipeline: Pipeline,
    source: str,
    documents: list[SourceDocument],
    counts: Counts,
    started: Callable[[Run], None],
    tenant: str | None = None,
) -> None:
    """Plan ``documents`` against the ledger (unchanged ones cost nothing) and ingest the rest, recorded as a
    run of ``source``; ``started`` is told the run once it exists. Nothing is deleted: a request names what to
    add, not the whole source."""
    ref = resolve_source(pipeline.conn, pipeline.settings, source, "pdf", tenant=tenant)
    with recorded_run(pipeline, ref, counts=counts) as run:
        started(run)
        planned = pipeline.plan(ref, documents, lambda _: False, only=[d.external_id for d in documents])
        run.counts.merge(planned.counts)
        try:
            run.counts.merge(pipeline.ingest(ref, planned.work, planned_at=planned.planned_at))
        finally:
            pipeline.finish_load()


class Service:
    """Warm, serve, drain. Requests get 503 until ``warm`` has loaded the models, opened the database, queued
    the journal's leftovers and started the workers."""

    def __init__(
        self,
        services: Services,
        settings: ServeSettings | None = None,
        *,
        resolver: Resolver = system_resolver,
        book: RunBook | None = None,
    ) -> None:
        self.services = services
        self.settings = settings or services.settings.serve
        s = self.settings
        self.tokens = Tokens.from_settings(s)
        check_exposure(s, self.tokens)
        try:
            self.policy = UrlPolicy.parse(s.url_allow)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self.resolver = resolver
        self.inbox = Inbox(services.settings.home / "inbox")
        self.book = book or RunBook(
            s.queue_size,
            workers=s.workers,
            dedupe_seconds=s.dedupe_seconds,
            queue_timeout=s.queue_timeout,
            history=s.history,
            on_final=self._settled,
        )
        self.failure: str | None = None
        """Why warming up failed (the service then stops)."""
        self._threads: list[threading.Thread] = []
        self._export: subprocess.Popen[bytes] | None = None
        """The int8 export being built for the next start (stopped with the service: redone next time)."""

    # -- life cycle --------------------------------------------------------------------------------------

    def warm(self) -> None:
        """Load the models and open the database before the service says ready: the first request must not
        pay for either. Then queue what the last process left unsettled, and start the workers."""
        tracing.setup()  # runs on the workers are traced when OTEL_EXPORTER_OTLP_ENDPOINT is set
        svc = self.services
        embedder = svc.embedder
        if isinstance(embedder, EmbeddingPool):
            embedder.start()  # the model loads (and calibrates) on its threads while the store opens
        # Migrates (a new store: before the model canary, which reads the generations); fails on a kind clash.
        ledger.ensure_source(svc.conn, self.settings.inbox_source, "pdf")
        if isinstance(embedder, EmbeddingPool):
            embedder.wait_ready(self.settings.ready_timeout)
        embedder.embed(["warm up the model"])
        with svc.pool.connection() as conn:  # the pool open and the generation registered before ready
            Pipeline(conn, svc.settings, svc.embedder, parser=svc.parser).model_id()
            serving = generations.active(conn)
            conn.commit()
        if serving is not None:
            svc.query_embedder(serving).embed(["warm up the query model"])
        pruned = self.inbox.prune(self.settings.inbox_retention)
        recovered = self.inbox.pending()
        for request in recovered:
            self.book.submit(request, recovered=True)
        if recovered or pruned:
            log.info("inbox: %d unsettled request(s) queued again, %d old file(s) pruned", len(recovered), pruned)
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"serve-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.book.set_ready()
        if isinstance(embedder, EmbeddingPool) and svc.settings.embedding.precision == "auto":
            tokenizer = embedder.tokenizer
            calibration = calibration_dir(svc.settings.embedding, svc.settings.home)
            self._export = export_in_background(
                tokenizer.model_dir,
                embedder.revision,
                embedder.max_seq_length,
                calibration,
                calibrate=svc.settings.embedding.model_dump_json(),
            )

    def warm_in_background(self) -> threading.Thread:
        def run() -> None:
            try:
                self.warm()
            except Exception as err:  # noqa: BLE001 - reported by the caller, which stops the service
                self.failure = f"{type(err).__name__}: {first_line(err)}"
                log.error("warming up failed: %s", self.failure)

        thread = threading.Thread(target=run, name="serve-warm", daemon=True)
        thread.start()
        return thread

    def drain(self, grace: float | None = None) -> None:
        """Refuse new requests (503); queued runs stay journaled for the next start; running ones finish (up
        to ``grace`` s, else the ledger lets the next start redo them)."""
        grace = self.settings.drain_seconds if grace is None else grace
        if self._export is not None and self._export.poll() is None:
            self._export.terminate()
        cancelled = self.book.close()
        if cancelled:
            log.warning("stopping: %d queued run(s) left for the next start", len(cancelled))
        if not self.book.wait_idle(grace):
            log.warning("stopping: runs still running after %.0f s are left to the next start", grace)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)
        self.inbox.prune(self.settings.inbox_retention)
        clear_state(self.services.settings.home)

    # -- admission (HTTP) ----------------------------------------------------------------------------------

    def default_source(self, principal: Principal) -> str:
        """Where posted files and URLs go: ``serve.inbox_source``, or a tenant's own inbox."""
        base = self.settings.inbox_source
        return base if principal.operator else f"{base}-{principal.tenant}"

    def admit(self, principal: Principal, request: TriggerRequest) -> Admitted | Rejected:
        """Check ``request`` against what ``principal`` may do and what can work, then queue it (journaled
        first, so an admitted request survives a crash)."""
        try:
            self.check_target(principal, request)
            if request.kind == "url":
                check(request.target, self.policy, self.resolver)  # refused before queueing; again at the fetch
        except Exception:
            self.inbox.drop(request, journaled=False)  # a posted file nothing will read
            raise
        created = self.inbox.admit(request)
        result = self.book.submit(request)
        if not (isinstance(result, Admitted) and not result.duplicate):
            self.inbox.drop(request, journaled=created)
        return result

    def check_target(self, principal: Principal, request: TriggerRequest) -> None:
        """Refuse at once what would certainly fail or is not the caller's: files into a source that is not a
        PDF source, records of an unconfigured source, any source of another tenant."""
        settings = self.services.settings
        configured = {s.name: s for s in settings.sources}
        found = configured.get(request.source)
        if request.kind in ("pdf", "url"):
            if found is not None and not isinstance(found, PdfSourceSettings):
                raise BadRequest(f"source {request.source!r} is a {found.kind} source: files go to PDF sources", 422)
        else:
            try:
                settings.source(request.source)
            except ConfigError as err:
                raise BadRequest(str(err), 422) from err
        if not principal.operator:
            self._check_tenant(principal, request.source)

    def _check_tenant(self, principal: Principal, source: str) -> None:
        configured = {s.name: s.tenant for s in self.services.settings.sources}
        if source in configured:
            owner: str | None = configured[source]
        else:
            with self.services.pool.connection() as conn:
                owner = source_tenant(conn, source)
        if owner is not None and owner != principal.tenant:
            raise Forbidden(f"source {source!r} belongs to another tenant: this token acts for {principal.tenant!r}")

    def run(self, principal: Principal, run_id: str) -> dict[str, Any] | None:
        record = self.book.get(run_id)
        if record is None or (not principal.operator and record["request"].get("tenant") != principal.tenant):
            return None
        return record

    # -- reads ---------------------------------------------------------------------------------------------

    def search(
        self, principal: Principal, query: str, k: int, where: SearchFilter, settings: SearchSettings
    ) -> list[SearchHit]:
        """A search on the warm query model; a tenant's token searches its own tenant only."""
        if not principal.operator:
            if where.tenant not in (None, principal.tenant):
                raise Forbidden(f"this token searches tenant {principal.tenant!r} only")
            where = dataclasses.replace(where, tenant=principal.tenant)
        return self.services.search(query, k, settings=settings, where=where)

    def status(self, principal: Principal) -> dict[str, Any]:
        self._operator_only(principal, "status")
        with self.services.pool.connection() as conn:
            return status_report(conn, self.services.settings)

    def quarantine(self, principal: Principal) -> list[dict[str, Any]]:
        self._operator_only(principal, "the quarantine list")
        with self.services.pool.connection() as conn:
            return quarantine_report(conn)

    @staticmethod
    def _operator_only(principal: Principal, what: str) -> None:
        if not principal.operator:
            raise Forbidden(f"{what} covers every tenant: it needs the operator's token (serve.token_env)")

    # -- workers -----------------------------------------------------------------------------------------

    def _settled(self, record: RunRecord) -> None:
        """The book's word that a run is over: its request leaves the journal (a cancelled one stays, for the
        next start), its posted file goes (kept for a retry when the run failed or quarantined it)."""
        if record.state is RunState.CANCELLED:
            return
        try:
            self.inbox.settle(record.request, keep=record.state is not RunState.COMPLETED)
        except OSError as err:
            log.warning("inbox: settling run %s: %s", record.id, err)

    def _work(self) -> None:
        """Take runs until the book closes. Each run borrows a pooled connection (checked before it is lent,
        replaced after a server restart, its session locks dropped when it comes back)."""
        svc = self.services
        while True:
            record = self.book.take()
            if record is None:
                return
            counts = Counts()
            started = time.perf_counter()
            try:
                with svc.pool.connection() as conn:
                    self._execute(Pipeline(conn, svc.settings, svc.embedder, parser=svc.parser), record, counts)
            except Exception as err:  # noqa: BLE001 - a failed run is recorded in its record, the worker goes on
                message = f"{type(err).__name__}: {first_line(err)}"
                log.warning("on-demand run %s failed: %s", record.id, message)
                self.book.finish(record.id, RunStatus.FAILED, counts.as_dict(), message)
                continue
            log.info("on-demand run %s done in %.2f s", record.id, time.perf_counter() - started)
            self.book.finish(record.id, outcome(counts), counts.as_dict())

    def _execute(self, pipeline: Pipeline, record: RunRecord, counts: Counts) -> None:
        request = record.request

        def started(run: Run) -> None:
            self.book.attach(record.id, store_run_id=run.id)

        if request.tenant is not None:
            self._check_tenant(Principal(request.tenant), request.source)  # again: the ledger may have changed
        if request.kind == "pdf":
            path = self.inbox.stored(request.target)
            ingest_documents(pipeline, request.source, [self._document(path)], counts, started, request.tenant)
        elif request.kind == "url":
            digest, path = self._download(request.target)
            doc = dataclasses.replace(self._document(path), external_id=request.target, uri=redact(request.target))
            try:
                ingest_documents(pipeline, request.source, [doc], counts, started, request.tenant)
            finally:
                self.inbox.discard(digest)
        else:
            self._records(pipeline, record, counts, started)

    def _download(self, url: str) -> tuple[str, Path]:
        s = self.settings
        body, final = fetch_pdf(
            url,
            policy=self.policy,
            max_bytes=s.max_body_bytes,
            timeout=s.download_timeout,
            max_redirects=s.max_redirects,
            resolver=self.resolver,
        )
        name = final.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return self.inbox.store(body, name or None)

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
