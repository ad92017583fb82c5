"""Prefect flows for ingestion. Tasks take small serialisable inputs (paths, ids) and use the process's warm
services; the flow only composes them, so each step reads clearly in the Prefect UI.

Each run is tagged with its source and kind, publishes its counts and throughput as a markdown artifact under
``artifacts.counts_key(source)`` (also when it fails, with what it did), and, while documents are processed,
a progress artifact. A run that quarantined documents ends in a Completed state named
``CompletedWithQuarantine``, tagged ``quarantined`` and with a warning in its logs; a source that fails
fails its run, and so does one whose deletions the mass-delete guard held (``DeletionsHeld``, after its
counts and artifact are recorded; ``allow_mass_delete`` confirms them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.settings import temporary_settings
from prefect.states import Completed

from connectors.registry import PdfSourceSettings
from flows import artifacts, pdfs, progress, sources
from flows.counts import Counts
from flows.delete_guard import Settled
from flows.pdfs import PdfPlan
from flows.planning import SourceRef, resolve_source
from flows.runs import Run, recorded_run
from flows.runtime import services
from telemetry import tracing


@contextmanager
def interactive() -> Iterator[None]:
    """Flows called here by a command someone waits for (``ragline ingest``) send no flow-run heartbeats,
    unless the operator set ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``. Prefect's heartbeat thread sleeps in steps
    of a second and the flow's end joins it: 0-1 s (0.9 s in a profiled run) added to every command. Heartbeats
    drive the automations that mark runs of deployments crashed; those keep Prefect's default, and a command
    killed mid-run is marked abandoned by ragline at its source's next run."""
    with temporary_settings(set_defaults={"flows.heartbeat_frequency": None}):
        yield


@dataclass
class _LiveProgress:
    artifact_id: UUID
    gate: artifacts.ProgressGate


# The progress artifact of each flow run in this process, by flow run id: the ingest tasks run in the flow's
# process and advance it document by document (a task run elsewhere finds none and reports nothing).
_live: dict[str, _LiveProgress] = {}
_live_lock = threading.Lock()


def _report(event: str, external_id: str) -> None:
    """Progress of one document: to this process's listener (the CLI's bar) and to the run's artifact."""
    progress.report(event, external_id)
    run_id = _flow_run_id()
    with _live_lock:
        live = _live.get(run_id) if run_id else None
        percent = live.gate.advance(event) if live else None
    if live is not None and percent is not None:
        update_progress_artifact(live.artifact_id, percent, description=live.gate.description())


def _start_progress(source: str, total: int) -> None:
    progress.start(total)
    run_id = _flow_run_id()
    if run_id is None or total == 0:
        return
    gate = artifacts.ProgressGate(total)
    # A sync call in a sync flow (Prefect's dispatch types it as maybe-async).
    artifact_id = cast(
        UUID, create_progress_artifact(0.0, key=artifacts.progress_key(source), description=gate.description())
    )
    with _live_lock:
        _live[run_id] = _LiveProgress(artifact_id, gate)


def _finish_progress() -> None:
    progress.finish()
    run_id = _flow_run_id()
    with _live_lock:
        if run_id:
            _live.pop(run_id, None)


@task(name="plan-pdf-changes", task_run_name="plan-pdf-changes-{source.name}", cache_policy=NO_CACHE)
def plan_pdf_changes(paths: list[str], source: SourceRef) -> PdfPlan:
    """Walk the paths, stat every PDF and compare with the ledger: only new, changed or due documents are
    read, parsed and embedded later; files gone from walked directories are marked for deletion."""
    return pdfs.plan_pdfs(services().pipeline, source, paths)


@task(name="ingest-pdf-documents", cache_policy=NO_CACHE)
def ingest_pdf_documents(files: list[str], source: SourceRef, planned_at: datetime) -> Counts:
    """Read, parse, chunk, embed and commit a batch of PDFs (each document version atomically)."""
    return pdfs.ingest_pdf_files(services().pipeline, source, files, planned_at, _report)


@task(name="remove-deleted-documents", cache_policy=NO_CACHE)
def remove_deleted_documents(
    document_ids: list[int], planned_at: datetime, source: SourceRef, allow_mass_delete: bool
) -> Settled:
    """Documents gone from the source lose their chunks (unless committed again since the plan), if the
    mass-delete guard lets them; else they are held, chunks kept, until confirmed."""
    return pdfs.settle_deletions(services().pipeline, source, document_ids, planned_at, confirmed=allow_mass_delete)


def _ingest_pdf(paths: list[str], source: str, plan_file: str | None, allow_mass_delete: bool) -> Any:
    svc = services()
    ref = resolve_source(svc.conn, svc.settings, source, "pdf")
    with recorded_run(svc.pipeline, ref, flow_run_id=_flow_run_id(), report=_publish) as run:
        _log_trace(run)
        # The CLI planned already (to know whether a flow was needed): its plan is used, not made again.
        plan = pdfs.read_plan(plan_file) if plan_file else plan_pdf_changes(paths, ref)
        _start_progress(source, len(plan.work))
        try:

            def ingest_batch(files: list[str], number: int, total: int) -> Counts:
                # Batches are named "1/3", "2/3"...: the task list reads as the run's progress.
                task_run = ingest_pdf_documents.with_options(task_run_name=f"ingest-pdf-documents-{number}/{total}")
                return task_run(files, ref, plan.planned_at)

            remove = remove_deleted_documents.with_options(task_run_name=f"remove-deleted-documents-{source}")

            def settle(deleted: list[int], planned_at: datetime) -> Settled:
                return remove(deleted, planned_at, ref, allow_mass_delete)

            pdfs.run_pdf_plan(
                svc.pipeline,
                plan,
                run.counts,
                ingest_batch=ingest_batch,
                settle=settle,
                allow_mass_delete=allow_mass_delete,
            )
        finally:
            _finish_progress()
    return _final_state(run.counts.as_dict())


@flow(name="ingest-pdf", flow_run_name="ingest-pdf-{source}", log_prints=True)
def ingest_pdf(
    paths: list[str], source: str = "pdf", plan_file: str | None = None, allow_mass_delete: bool = False
) -> Any:
    """Ingest PDF files and directories (recursive) into the vector store. ``plan_file``: a plan the caller
    made already (``flows.pdfs.write_plan``), consumed by this run; without one the run plans itself.
    ``allow_mass_delete``: apply deletions the mass-delete guard would hold."""
    tracing.setup()  # a worker's first flow: its runs are traced from here
    run_tags = artifacts.run_tags(source, "pdf")
    _tag_run(run_tags)
    try:
        with tags(*run_tags):
            return _ingest_pdf(paths, source, plan_file, allow_mass_delete)
    finally:
        if plan_file:
            Path(plan_file).unlink(missing_ok=True)


@task(name="sync-source", task_run_name="sync-source-{source}", cache_policy=NO_CACHE)
def sync_source(source: str, allow_mass_delete: bool = False) -> dict[str, int]:
    """Pull a remote source from its checkpoint through the resilient HTTP layer and ingest it. The source's
    global concurrency slot is held throughout: a second run of the same source waits for this one."""
    run = sources.sync_source(
        services().pipeline,
        source,
        flow_run_id=_flow_run_id(),
        report=_publish,
        progress=_report,
        started=_log_trace,
        allow_mass_delete=allow_mass_delete,
    )
    return run.counts.as_dict()


@flow(name="ingest-source", flow_run_name="ingest-{source}", log_prints=True)
def ingest_source(source: str, allow_mass_delete: bool = False) -> Any:
    """Ingest one configured source; a source that fails (its circuit open, its API refusing us, deletions
    held by the mass-delete guard) fails the run, visibly, after committing what it could.
    ``allow_mass_delete``: apply deletions the guard would hold."""
    tracing.setup()  # a worker's first flow: its runs are traced from here
    settings = services().settings.source(source)
    run_tags = artifacts.run_tags(source, settings.kind)
    _tag_run(run_tags)
    with tags(*run_tags):
        if isinstance(settings, PdfSourceSettings):
            # In this run, not as a subflow: its tasks, counts and state are this run's.
            return _ingest_pdf(settings.paths, source, None, allow_mass_delete)
        return _final_state(sync_source(source, allow_mass_delete))


def _final_state(result: dict[str, int]) -> Any:
    """Quarantined documents keep a run from reading as a plain success: the state's name says so, the run
    gets a ``quarantined`` tag to filter on, and its log a warning. The state stays of type Completed: the
    documents that could be ingested were, and callers get the counts as the result."""
    quarantined = result["quarantined"]
    if not quarantined:
        return result
    get_run_logger().warning(
        "%d document(s) quarantined: `ragline quarantine list` shows why, `ragline quarantine retry` retries",
        quarantined,
    )
    _tag_run([artifacts.QUARANTINE_TAG])
    return Completed(message=f"{quarantined} document(s) quarantined", name="CompletedWithQuarantine", data=result)


def _log_trace(run: Run) -> None:
    """The run's trace id in its Prefect logs (the UI shows it), to find its spans in the tracing backend."""
    if run.trace_id is not None:
        get_run_logger().info("run %d traced: trace id %s", run.id, run.trace_id)


def _publish(run: Run) -> None:
    """The run's counts and throughput as a markdown artifact, failed runs included (``recorded_run`` keeps a
    failure here from hiding the run's own error)."""
    from embedding.backend_status import backend_status

    settings = services().settings
    backends = [b.describe() for b in backend_status(settings.embedding, settings.home)]
    create_markdown_artifact(
        artifacts.counts_markdown(run.source.name, run.source.kind, run.counts, run.seconds, run.error, backends),
        key=artifacts.counts_key(run.source.name),
        description=artifacts.counts_description(run.source.name, run.counts, run.error),
    )


def _tag_run(extra: list[str]) -> None:
    """Add tags to the current flow run. Tags given to a flow are fixed when its run is created, by whoever
    calls it (the CLI, a deployment): the run adds its source's tags itself, so every caller gets them."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    flow_run = context.flow_run
    wanted = sorted(set(flow_run.tags) | set(extra))
    if wanted == sorted(flow_run.tags):
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=wanted)
    flow_run.tags = wanted


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None
