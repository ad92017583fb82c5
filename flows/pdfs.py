"""PDF folders: planned once, then ingested in batches of documents, then deletions settled by the
mass-delete guard (``flows.delete_guard``). The CLI, the Prefect flow (its steps as tasks), the on-demand
endpoint and library use all go through these functions.

A plan is made without reading any file whose size, mtime, ctime and inode match the ledger; every file
that needs work is read once, when the pipeline claims it (hashed and parsed from the same bytes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from connectors.pdf import PdfConnector
from flows import delete_guard
from flows.counts import Counts, Progress
from flows.delete_guard import Settled
from flows.pipeline import Pipeline
from flows.planning import SourceRef, resolve_source
from flows.runs import recorded_run
from vectorstore import ledger

log = logging.getLogger(__name__)

DOCUMENTS_PER_TASK = 64
"""Documents per ingest step: in the Prefect UI each is a task run, so the task list reads as progress."""

IngestBatch = Callable[[list[str], int, int], Counts]
"""Ingests one batch of files of the plan: (files, batch number from 1, batch count) -> counts."""
SettleDeletions = Callable[[list[int], datetime], Settled]
"""Holds the plan's deletions (ledger ids, the plan's time) and settles the source's held deletions."""
STALE_PLAN_SECONDS = 86400.0


@dataclass
class PdfPlan:
    """What a PDF run has to do, small and serialisable: the files to read and ingest, the ledger ids of
    documents gone from walked directories, when the plan was made, and what planning already counted."""

    source: SourceRef
    work: list[str]
    deleted: list[int]
    planned_at: datetime
    counts: Counts = field(default_factory=Counts)

    @property
    def empty(self) -> bool:
        return not self.work and not self.deleted

    def batches(self, size: int = DOCUMENTS_PER_TASK) -> list[list[str]]:
        return [self.work[i : i + size] for i in range(0, len(self.work), size)]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": asdict(self.source),
            "work": self.work,
            "deleted": self.deleted,
            "planned_at": self.planned_at.isoformat(),
            "counts": self.counts.as_dict(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PdfPlan:
        return cls(
            SourceRef(**data["source"]),
            [str(w) for w in data["work"]],
            [int(d) for d in data["deleted"]],
            datetime.fromisoformat(data["planned_at"]),
            Counts(**data["counts"]),
        )


def plan_pdfs(pipeline: Pipeline, source: SourceRef, paths: Sequence[str | Path]) -> PdfPlan:
    """Walk ``paths``, stat every PDF and compare with the ledger; files gone from walked directories are
    marked for deletion; documents whose deletion was held and that are found again are held no more.
    Documents that cannot be found again by name (a file name that is not UTF-8 is recorded escaped) are
    quarantined here, where their document is at hand."""
    connector = PdfConnector([Path(p) for p in paths], pipeline.settings.pdf)
    planned = pipeline.plan(source, connector.iter_documents(), connector.covers)
    pipeline.retrying(lambda: ledger.release_held(pipeline.conn, planned.reappeared))
    unnamed = [doc for doc in planned.work if not Path(doc.external_id).exists()]
    planned.counts.merge(pipeline.ingest(source, unnamed))
    skip = {doc.external_id for doc in unnamed}
    work = [doc.external_id for doc in planned.work if doc.external_id not in skip]
    return PdfPlan(source, work, planned.deleted, planned.planned_at, planned.counts)


def ingest_pdf_files(
    pipeline: Pipeline,
    source: SourceRef,
    files: Sequence[str],
    planned_at: datetime,
    progress: Progress | None = None,
) -> Counts:
    """Parse, chunk, embed and commit these files of a plan made at ``planned_at`` (each read once, when
    claimed)."""
    connector = PdfConnector([], pipeline.settings.pdf)
    documents = []
    for file in files:
        try:
            documents.append(connector.document(Path(file)))
        except FileNotFoundError:
            log.warning("%s disappeared before it could be ingested", file)
    return pipeline.ingest(source, documents, progress, planned_at=planned_at)


def settle_deletions(
    pipeline: Pipeline, source: SourceRef, deleted: list[int], planned_at: datetime, *, confirmed: bool = False
) -> Settled:
    """Hold the plan's deletions, then settle every held deletion of the source (earlier runs' too): all
    applied if the guard or ``confirmed`` allows them, else all kept."""
    pipeline.retrying(lambda: ledger.hold_deletions(pipeline.conn, deleted, planned_at))
    return pipeline.retrying(lambda: delete_guard.settle(pipeline.conn, pipeline.settings, source, confirmed=confirmed))


def run_pdf_plan(
    pipeline: Pipeline,
    plan: PdfPlan,
    counts: Counts,
    *,
    ingest_batch: IngestBatch | None = None,
    settle: SettleDeletions | None = None,
    allow_mass_delete: bool = False,
) -> None:
    """The steps after the plan, counted into ``counts``: a load sized by the work (a large one goes in
    without the live HNSW index, built once at the end), the files batch by batch, then the deletions
    settled. The flow passes its tasks as the steps; by default they run here. Raises ``DeletionsHeld`` once
    counted when the guard held them (``allow_mass_delete`` confirms them)."""
    counts.merge(plan.counts)
    step = ingest_batch or (lambda files, _n, _of: ingest_pdf_files(pipeline, plan.source, files, plan.planned_at))
    batches = plan.batches()
    if batches:  # a run without work (deletions only, or none) needs no model and no load
        pipeline.begin_load(pipeline.expected_chunks(len(plan.work)))
        try:
            for number, files in enumerate(batches, start=1):
                counts.merge(step(files, number, len(batches)))
        finally:
            pipeline.finish_load()
    if not plan.deleted and not allow_mass_delete:
        # Nothing to settle: a deletion held by an earlier run is listed again by every plan that walks where
        # its file was (its ledger row is still live); a confirmed run settles whatever the source holds.
        return
    settled = (settle or partial(settle_deletions, pipeline, plan.source, confirmed=allow_mass_delete))(
        plan.deleted, plan.planned_at
    )
    counts.deleted += settled.deleted
    counts.deletions_held += settled.held
    settled.raise_if_held()


def ingest_pdf_paths(
    pipeline: Pipeline,
    paths: Sequence[str | Path],
    source: str = "pdf",
    *,
    allow_mass_delete: bool = False,
    counts: Counts | None = None,
) -> Counts:
    """A whole recorded PDF run in this process without Prefect: for benchmarks, tests and embedding ragline
    as a library. The ``ingest-pdf`` flow runs the same steps as tasks. ``counts``, when given, is filled as
    the run goes (a caller keeps them when it fails, e.g. with ``DeletionsHeld``)."""
    ref = resolve_source(pipeline.conn, pipeline.settings, source, "pdf")
    with recorded_run(pipeline, ref, counts=counts) as run:
        run_pdf_plan(pipeline, plan_pdfs(pipeline, ref, paths), run.counts, allow_mass_delete=allow_mass_delete)
    return run.counts


# -- plans handed from the CLI to the flow ------------------------------------------------------------------


def write_plan(home: Path, plan: PdfPlan) -> Path:
    """Save a plan for the flow the CLI starts next (a flow parameter stays small: the file's path)."""
    folder = home / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):  # left by runs killed before they removed theirs
        with contextlib.suppress(FileNotFoundError):
            if stale.stat().st_mtime < time.time() - STALE_PLAN_SECONDS:
                stale.unlink()
    path = folder / f"{plan.source.name}-{uuid.uuid4().hex[:12]}.json"
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(plan.to_json()))
    os.replace(tmp, path)
    return path


def read_plan(path: str | Path) -> PdfPlan:
    return PdfPlan.from_json(json.loads(Path(path).read_text()))
