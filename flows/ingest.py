"""Prefect flows for ingestion. Tasks take small serialisable inputs (paths, ids) and use the process's warm
services; the flow only composes them, so each step reads clearly in the Prefect UI."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from connectors.pdf import PdfConnector
from connectors.registry import PdfSourceSettings, remote_source
from flows import limits, progress
from flows.pipeline import Counts, sync_remote
from flows.runtime import services
from vectorstore import ledger, runs

DOCUMENTS_PER_TASK = 64


@task(name="plan-pdf-changes", cache_policy=NO_CACHE)
def plan_pdf_changes(paths: list[str], source: str) -> dict[str, Any]:
    """Walk the paths, hash every PDF and compare with the ledger: only new, changed or due documents are
    parsed and embedded later; files gone from walked directories are marked for deletion."""
    svc = services()
    source_id = ledger.ensure_source(svc.conn, source, "pdf")
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
    """Parse, chunk, embed and commit a batch of PDFs, one transaction per document."""
    svc = services()
    source_id = ledger.ensure_source(svc.conn, source, "pdf")
    connector = PdfConnector([], svc.settings.pdf)
    documents = []
    for file in files:
        try:
            documents.append(connector.document(Path(file)))
        except FileNotFoundError:
            get_run_logger().warning("%s disappeared before it could be ingested", file)
    counts = svc.pipeline.ingest(source_id, source, documents, progress.report)
    return counts.as_dict()


@task(name="remove-deleted-documents", cache_policy=NO_CACHE)
def remove_deleted_documents(document_ids: list[int], planned_at: str) -> int:
    """Documents gone from the source lose their chunks (unless committed again since the plan)."""
    return services().pipeline.delete(document_ids, datetime.fromisoformat(planned_at))


@flow(name="ingest-pdf", flow_run_name="ingest-pdf-{source}", log_prints=True)
def ingest_pdf(paths: list[str], source: str = "pdf") -> Any:
    """Ingest PDF files and directories (recursive) into the vector store."""
    svc = services()
    source_id = ledger.ensure_source(svc.conn, source, "pdf")
    run_id = runs.start_run(svc.conn, source_id, _flow_run_id())
    counts = Counts()
    try:
        planned = plan_pdf_changes(paths, source)
        counts.merge(Counts(**planned["counts"]))
        progress.start(len(planned["work"]))
        work: list[str] = planned["work"]
        for start in range(0, len(work), DOCUMENTS_PER_TASK):
            done = ingest_pdf_documents(work[start : start + DOCUMENTS_PER_TASK], source)
            counts.merge(Counts(**done))
        if planned["deleted"]:
            counts.deleted += remove_deleted_documents(planned["deleted"], planned["planned_at"])
    except BaseException as err:
        runs.finish_run(svc.conn, run_id, "failed", counts.as_dict(), f"{type(err).__name__}: {err}")
        raise
    finally:
        progress.finish()
    status = "completed_with_quarantine" if counts.quarantined else "completed"
    runs.finish_run(svc.conn, run_id, status, counts.as_dict())
    result = counts.as_dict()
    if counts.quarantined:
        return Completed(
            message=f"{counts.quarantined} document(s) quarantined",
            name="CompletedWithQuarantine",
            data=result,
        )
    return result


@task(name="sync-source", cache_policy=NO_CACHE)
def sync_source(source: str) -> dict[str, int]:
    """Pull a remote source from its checkpoint through the resilient HTTP layer and ingest it. The source's
    global concurrency slot is held throughout: a second run of the same source waits for this one."""
    svc = services()
    settings = svc.settings.source(source)
    policy = getattr(settings, "http", None)
    limits.ensure_limits(source, policy)
    source_id = ledger.ensure_source(svc.conn, source, settings.kind)
    with limits.source_slot(source, stale_leases=runs.abandon_dead(svc.conn, source_id)) as lease:
        connector = remote_source(settings)
        client = getattr(connector, "client", None)
        if client is not None and policy is not None:
            client.gate = limits.quota_gate(policy)
        run_id = runs.start_run(svc.conn, source_id, _flow_run_id(), lease)
        counts = Counts()
        try:
            sync_remote(svc.pipeline, source, connector, counts)
        except BaseException as err:
            runs.finish_run(svc.conn, run_id, "failed", counts.as_dict(), f"{type(err).__name__}: {err}")
            raise
        finally:
            if client is not None:
                client.close()
        runs.finish_run(
            svc.conn, run_id, "completed_with_quarantine" if counts.quarantined else "completed", counts.as_dict()
        )
    return counts.as_dict()


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@flow(name="ingest-source", flow_run_name="ingest-{source}", log_prints=True)
def ingest_source(source: str) -> Any:
    """Ingest one configured source; a source that fails (its circuit open, its API refusing us) fails the
    run, visibly, after committing what it could."""
    settings = services().settings.source(source)
    if isinstance(settings, PdfSourceSettings):
        return ingest_pdf(settings.paths, source)
    result = sync_source(source)
    if result["quarantined"]:
        return Completed(
            message=f"{result['quarantined']} record(s) quarantined", name="CompletedWithQuarantine", data=result
        )
    return result
