"""Prefect flows for ingestion. Tasks take small serialisable inputs (paths, ids) and use the process's warm
services; the flow only composes them, so each step reads clearly in the Prefect UI.

Each run is tagged with its source and kind, publishes its counts and throughput as a markdown artifact under
``artifacts.counts_key(source)`` (also when it fails, with what it did), and, while documents are processed,
a progress artifact. A run that quarantined documents ends in a Completed state named
``CompletedWithQuarantine``, tagged ``quarantined`` and with a warning in its logs; a source that fails
fails its run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.states import Completed

from connectors.pdf import PdfConnector
from connectors.registry import PdfSourceSettings, remote_source
from flows import artifacts, limits, progress
from flows.pipeline import Counts, sync_remote
from flows.runtime import services
from vectorstore import runs

DOCUMENTS_PER_TASK = 64


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


@task(name="plan-pdf-changes", task_run_name="plan-pdf-changes-{source}", cache_policy=NO_CACHE)
def plan_pdf_changes(paths: list[str], source: str) -> dict[str, Any]:
    """Walk the paths, hash every PDF and compare with the ledger: only new, changed or due documents are
    parsed and embedded later; files gone from walked directories are marked for deletion."""
    svc = services()
    source_id = svc.pipeline.source_id(source, "pdf")
    connector = PdfConnector([Path(p) for p in paths], svc.settings.pdf)
    result = svc.pipeline.plan(source_id, connector.iter_documents(), connector.covers)
    # Documents that cannot be found again by name (a file name that is not UTF-8 is recorded escaped) are
    # quarantined here, where their document is at hand; their load fails at once, with no model work.
    unnamed = [doc for doc in result.work if not Path(doc.external_id).exists()]
    result.counts.merge(svc.pipeline.ingest(source_id, source, unnamed))
    skip = {doc.external_id for doc in unnamed}
    return {
        "work": [doc.external_id for doc in result.work if doc.external_id not in skip],
        "deleted": result.deleted,
        "planned_at": result.planned_at.isoformat(),
        "counts": result.counts.as_dict(),
    }


@task(name="ingest-pdf-documents", cache_policy=NO_CACHE)
def ingest_pdf_documents(files: list[str], source: str) -> dict[str, int]:
    """Parse, chunk, embed and commit a batch of PDFs (each document version atomically)."""
    svc = services()
    source_id = svc.pipeline.source_id(source, "pdf")
    connector = PdfConnector([], svc.settings.pdf)
    documents = []
    for file in files:
        try:
            documents.append(connector.document(Path(file)))
        except FileNotFoundError:
            get_run_logger().warning("%s disappeared before it could be ingested", file)
    counts = svc.pipeline.ingest(source_id, source, documents, _report)
    return counts.as_dict()


@task(name="remove-deleted-documents", cache_policy=NO_CACHE)
def remove_deleted_documents(document_ids: list[int], planned_at: str) -> int:
    """Documents gone from the source lose their chunks (unless committed again since the plan)."""
    return services().pipeline.delete(document_ids, datetime.fromisoformat(planned_at))


def _ingest_pdf(paths: list[str], source: str) -> Any:
    svc = services()
    source_id = svc.pipeline.source_id(source, "pdf")
    run_id = runs.start_run(svc.conn, source_id, _flow_run_id())
    counts = Counts()
    started = time.monotonic()
    try:
        planned = plan_pdf_changes(paths, source)
        counts.merge(Counts(**planned["counts"]))
        work: list[str] = planned["work"]
        # A large load goes in without the live HNSW index, built once at the end (vectorstore.bulk).
        svc.pipeline.begin_load(svc.pipeline.expected_chunks(len(work)))
        _start_progress(source, len(work))
        batches = range(0, len(work), DOCUMENTS_PER_TASK)
        for number, start in enumerate(batches, start=1):
            # Batches are named "1/3", "2/3"...: the task list reads as the run's progress.
            batch = ingest_pdf_documents.with_options(task_run_name=f"ingest-pdf-documents-{number}/{len(batches)}")
            counts.merge(Counts(**batch(work[start : start + DOCUMENTS_PER_TASK], source)))
        if planned["deleted"]:
            remove = remove_deleted_documents.with_options(task_run_name=f"remove-deleted-documents-{source}")
            counts.deleted += remove(planned["deleted"], planned["planned_at"])
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        runs.finish_run(svc.conn, run_id, "failed", counts.as_dict(), error)
        _publish_failure(source, "pdf", counts, time.monotonic() - started, error)
        raise
    finally:
        _finish_progress()
        svc.pipeline.finish_load()
    runs.finish_run(svc.conn, run_id, artifacts.outcome(counts), counts.as_dict())
    _publish_counts(source, "pdf", counts, time.monotonic() - started)
    return _final_state(counts.as_dict())


@flow(name="ingest-pdf", flow_run_name="ingest-pdf-{source}", log_prints=True)
def ingest_pdf(paths: list[str], source: str = "pdf") -> Any:
    """Ingest PDF files and directories (recursive) into the vector store."""
    run_tags = artifacts.run_tags(source, "pdf")
    _tag_run(run_tags)
    with tags(*run_tags):
        return _ingest_pdf(paths, source)


@task(name="sync-source", task_run_name="sync-source-{source}", cache_policy=NO_CACHE)
def sync_source(source: str) -> dict[str, int]:
    """Pull a remote source from its checkpoint through the resilient HTTP layer and ingest it. The source's
    global concurrency slot is held throughout: a second run of the same source waits for this one."""
    svc = services()
    settings = svc.settings.source(source)
    policy = getattr(settings, "http", None)
    limits.ensure_limits(source, policy)
    source_id = svc.pipeline.source_id(source, settings.kind)
    with limits.source_slot(source, stale_leases=runs.abandon_dead(svc.conn, source_id)) as lease:
        connector = remote_source(settings)
        client = getattr(connector, "client", None)
        if client is not None and policy is not None:
            client.gate = limits.quota_gate(policy)
        run_id = runs.start_run(svc.conn, source_id, _flow_run_id(), lease)
        counts = Counts()
        started = time.monotonic()
        try:
            sync_remote(svc.pipeline, source, connector, counts, progress=_report)
        except BaseException as err:
            error = f"{type(err).__name__}: {err}"
            runs.finish_run(svc.conn, run_id, "failed", counts.as_dict(), error)
            # Published here, where the counts of a failed sync are at hand: the flow only sees the error.
            _publish_failure(source, settings.kind, counts, time.monotonic() - started, error)
            raise
        finally:
            if client is not None:
                client.close()
        runs.finish_run(svc.conn, run_id, artifacts.outcome(counts), counts.as_dict())
        _publish_counts(source, settings.kind, counts, time.monotonic() - started)
    return counts.as_dict()


@flow(name="ingest-source", flow_run_name="ingest-{source}", log_prints=True)
def ingest_source(source: str) -> Any:
    """Ingest one configured source; a source that fails (its circuit open, its API refusing us) fails the
    run, visibly, after committing what it could."""
    settings = services().settings.source(source)
    run_tags = artifacts.run_tags(source, settings.kind)
    _tag_run(run_tags)
    with tags(*run_tags):
        if isinstance(settings, PdfSourceSettings):
            # In this run, not as a subflow: its tasks, counts and state are this run's.
            return _ingest_pdf(settings.paths, source)
        return _final_state(sync_source(source))


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


def _publish_counts(source: str, kind: str, counts: Counts, seconds: float, error: str | None = None) -> None:
    create_markdown_artifact(
        artifacts.counts_markdown(source, kind, counts, seconds, error),
        key=artifacts.counts_key(source),
        description=artifacts.counts_description(source, counts, error),
    )


def _publish_failure(source: str, kind: str, counts: Counts, seconds: float, error: str) -> None:
    """The counts of a failed run, without hiding its error behind a second one (the API it failed on)."""
    try:
        _publish_counts(source, kind, counts, seconds, error)
    except Exception:  # noqa: BLE001 - the run's own error is the one to raise
        get_run_logger().exception("could not publish the counts artifact of %s", source)


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
