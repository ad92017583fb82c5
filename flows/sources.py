"""Remote sources: opened in one place (connector, HTTP limits, the source's Prefect slot, the shared-quota
gate, close) and synced batch by batch from their saved cursor. The Prefect flow and the on-demand endpoint
both call ``sync_source``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from connectors.base import RemoteSource
from connectors.registry import PdfSourceSettings, remote_source
from flows import delete_guard, limits
from flows.counts import Counts, Progress
from flows.pipeline import Pipeline
from flows.planning import SourceRef, resolve_source
from flows.prefetch import prefetch
from flows.runs import Report, Run, recorded_run
from flows.settings import ConfigError
from vectorstore import cursors, ledger, runs


@dataclass(frozen=True)
class OpenedSource:
    connector: RemoteSource
    source: SourceRef
    lease_id: uuid.UUID
    """The source slot's lease, recorded with the run so a killed run's slot can be released by the next."""


@contextmanager
def open_remote(pipeline: Pipeline, name: str) -> Iterator[OpenedSource]:
    """Open remote source ``name`` for one sync: its limits created, its single Prefect slot held (a second
    run of the source waits; slots of runs known dead on this host are freed first), its connector built
    with the shared-quota gate, and closed at the end."""
    settings = pipeline.settings.source(name)
    if isinstance(settings, PdfSourceSettings):
        raise ConfigError(f"source {name!r} is a pdf source, not a remote one")
    limits.ensure_limits(name, settings.http)
    source = resolve_source(pipeline.conn, pipeline.settings, name, settings.kind)
    with (
        limits.source_slot(name, stale_leases=runs.abandon_dead(pipeline.conn, source.id)) as lease_id,
        remote_source(settings, gate=limits.quota_gate(settings.http)) as connector,
    ):
        yield OpenedSource(connector, source, lease_id)


def sync_source(
    pipeline: Pipeline,
    name: str,
    *,
    flow_run_id: str | None = None,
    report: Report | None = None,
    progress: Progress | None = None,
    started: Callable[[Run], None] | None = None,
    allow_mass_delete: bool = False,
) -> Run:
    """One recorded incremental sync of remote source ``name``; ``started`` is told the run once it exists.
    ``allow_mass_delete`` confirms deletions the mass-delete guard would hold."""
    with (
        open_remote(pipeline, name) as opened,
        recorded_run(pipeline, opened.source, flow_run_id=flow_run_id, lease_id=opened.lease_id, report=report) as run,
    ):
        if started is not None:
            started(run)
        sync_remote(
            pipeline,
            opened.source,
            opened.connector,
            run.counts,
            progress=progress,
            allow_mass_delete=allow_mass_delete,
        )
    return run


def sync_remote(
    pipeline: Pipeline,
    source: SourceRef | str,
    connector: RemoteSource,
    counts: Counts | None = None,
    *,
    prefetch_depth: int = 2,
    progress: Progress | None = None,
    allow_mass_delete: bool = False,
) -> Counts:
    """Pull a remote source batch by batch from its saved cursor: each batch is planned against the ledger
    (unchanged records cost nothing), ingested, its deletions held, and only then is its cursor saved.
    A crash resumes after the last saved batch; replaying a batch writes the same rows. The next pages are
    fetched while this one is embedded (``prefetch_depth``). ``counts`` is filled as the sync goes, so a
    failed sync still reports what it did. ``source`` by name is resolved here, once (library use).

    Deletions are settled once the whole sync went through (``flows.delete_guard``): the cursor moves past
    them batch by batch, so they wait in the ledger, held; within the guard (or confirmed by
    ``allow_mass_delete``) they are applied at the end, else the sync raises ``DeletionsHeld`` once counted.
    A sync that fails before its end deletes nothing."""
    if isinstance(source, str):
        source = resolve_source(pipeline.conn, pipeline.settings, source, connector.kind)
    counts = Counts() if counts is None else counts
    pipeline.begin_load()  # a sync of unknown size: the index is dropped only once it proves large
    try:
        # Every statement between batches goes through ``pipeline.retrying``: a database that went away is
        # reconnected to (within database.reconnect_seconds) and the statement done again.
        saved = pipeline.retrying(lambda: cursors.load_cursor(pipeline.conn, source.id))
        for batch in prefetch(connector.batches(saved), depth=prefetch_depth):
            ids = [d.external_id for d in batch.documents]
            planned = pipeline.plan(source, batch.documents, lambda _: False, only=ids)
            pipeline.retrying(partial(_release_held, pipeline, planned.reappeared))
            counts.merge(planned.counts)
            counts.merge(pipeline.ingest(source, planned.work, progress, planned_at=planned.planned_at))
            if batch.deleted:
                pipeline.retrying(partial(_hold, pipeline, source, batch.deleted, planned.planned_at))
            pipeline.retrying(partial(_save_cursor, pipeline, source, batch.cursor))
        settled = pipeline.retrying(
            lambda: delete_guard.settle(pipeline.conn, pipeline.settings, source, confirmed=allow_mass_delete)
        )
        counts.deleted += settled.deleted
        counts.deletions_held += settled.held
    finally:
        stats = connector.stats
        counts.http_requests, counts.http_retries, counts.throttled = stats.requests, stats.retries, stats.throttled
        pipeline.finish_load()
    settled.raise_if_held()
    return counts


def _hold(pipeline: Pipeline, source: SourceRef, external_ids: list[str], planned_at: datetime) -> None:
    known = ledger.entries(pipeline.conn, source.id, external_ids)
    ledger.hold_deletions(pipeline.conn, [e.id for e in known.values()], planned_at)


def _release_held(pipeline: Pipeline, document_ids: list[int]) -> None:
    ledger.release_held(pipeline.conn, document_ids)


def _save_cursor(pipeline: Pipeline, source: SourceRef, cursor: dict[str, Any] | None) -> None:
    cursors.save_cursor(pipeline.conn, source.id, cursor)
