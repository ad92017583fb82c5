"""The ``reembed-store`` flow: bring the configured model's generation up to date in the background and switch
search to it (flows.reembed), with its progress and result visible in the Prefect UI. A deployment can run
it on a schedule: with nothing to do it returns at once."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.reembed import ReembedResult, migrate_generation
from flows.runtime import services


@task(name="reembed-generation", cache_policy=NO_CACHE)
def reembed_generation(batch_documents: int, switch: bool) -> dict[str, Any]:
    """Embed the stored chunks again with the configured model, document by document, then build its index
    and switch search to it."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    created = create_progress_artifact(progress=0.0, key="reembed-progress", description="Documents re-embedded")
    progress_id = created if isinstance(created, uuid.UUID) else None  # a coroutine only in async contexts

    def report(result: ReembedResult) -> None:
        if progress_id is not None:
            done = result.documents + result.skipped
            update_progress_artifact(progress_id, progress=min(100.0, 100.0 * done / max(1, result.planned)))

    result = migrate_generation(services().pipeline, batch_documents=batch_documents, switch=switch, after_batch=report)
    if progress_id is not None:
        update_progress_artifact(progress_id, progress=100.0)  # done, also when there was nothing to do
    return result.as_dict()


@flow(name="reembed-store", flow_run_name="reembed-store", log_prints=True)
def reembed_store(batch_documents: int = 32, switch: bool = True) -> dict[str, Any]:
    """Re-embed into the configured model's generation while search serves the old one; then switch."""
    result = reembed_generation(batch_documents, switch)
    create_markdown_artifact(
        key="reembed-store",
        markdown="\n".join(
            [
                f"Serving before: {result['serving']}; target: {result['target']}",
                "",
                "| documents | chunks | re-cut | skipped | index build s | switched | purged | seconds |",
                "|---|---|---|---|---|---|---|---|",
                f"| {result['documents']} | {result['chunks']} | {result['recut']} | {result['skipped']} "
                f"| {result['index_seconds']:.1f} | {result['switched']} | {result['purged']} "
                f"| {result['seconds']:.1f} |",
            ]
        ),
        description="Re-embedding into a new model generation",
    )
    return result
