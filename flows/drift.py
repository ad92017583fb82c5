"""Embedding drift of a run against its source's baseline, measured where every run ends (``flows.runs``).

A source's baseline is anchored once it holds ``drift.baseline_min_chunks`` chunks in the generation being
written, from a sample of everything it holds then: small first runs accumulate until there is enough to
describe the source (the run that gets it there reads ``baseline``). Every later run that committed
documents is sampled (the chunks of the documents it committed, reused vectors included) and scored
(``embedding.drift.compare``); the result is kept on the run's row (``runs.drift``). A run with fewer than
``drift.min_chunks`` chunks reads ``insufficient``: a one-page update never raises an alarm. Over the
threshold: a warning in the run's log, a drift artifact in Prefect (any measured run gets one, under a key
per source, so the UI keeps the source's drift history), and ``ragline_drift_alert`` at 1.

``reset`` re-anchors (``ragline baseline reset``): from the source's stored chunks, at once, or from the
chunks of its latest run that committed documents (the material an alert was about, accepted as the new
normal). Measuring never fails a run: an error is logged and the run keeps its outcome.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedding import drift as stats
from flows.settings import DriftSettings
from telemetry.metrics import DRIFT_ALERT, DRIFT_SCORE
from vectorstore import baselines
from vectorstore.db import Connection

if TYPE_CHECKING:
    from flows.pipeline import Pipeline
    from flows.runs import Run

log = logging.getLogger(__name__)


def rules(settings: DriftSettings) -> stats.DriftRules:
    return stats.DriftRules(min_chunks=settings.min_chunks, threshold=settings.threshold, alpha=settings.alpha)


@dataclass(frozen=True)
class Anchored:
    """A baseline just anchored (None from ``reset`` when the source holds too few chunks)."""

    id: int
    origin: str
    chunks: int
    sample: int


def _anchor(
    conn: Connection, source_id: int, model_id: int, sample: baselines.Sample, origin: str, run_id: int | None
) -> Anchored:
    profile = stats.profile(sample.vectors, sample.tokens)
    baseline_id = baselines.anchor(
        conn, source_id, model_id, profile, chunks=sample.total, origin=origin, run_id=run_id
    )
    return Anchored(baseline_id, origin, sample.total, profile.count)


def measure(conn: Connection, settings: DriftSettings, source_id: int, run_id: int, model_id: int) -> dict[str, Any]:
    """The drift of run ``run_id`` (what goes into ``runs.drift``), anchoring the source's baseline first
    when it has none and now holds enough chunks."""
    sample = baselines.run_sample(conn, run_id, source_id, model_id, settings.sample)
    base = baselines.current(conn, source_id, model_id)
    if base is None:
        held = baselines.source_sample(conn, source_id, model_id, settings.sample)
        if held.total < settings.baseline_min_chunks:
            return {
                "status": "insufficient",
                "alert": False,
                "score": None,
                "sample": len(sample.tokens),
                "model_id": model_id,
                "reason": f"no baseline yet: the source holds {held.total} of the {settings.baseline_min_chunks} "
                "chunks its baseline is anchored from",
            }
        anchored = _anchor(conn, source_id, model_id, held, baselines.ORIGIN_FIRST, run_id)
        return {
            "status": "baseline",
            "alert": False,
            "score": 0.0,
            "sample": len(sample.tokens),
            "model_id": model_id,
            "baseline_id": anchored.id,
            "baseline_origin": anchored.origin,
            "reason": f"baseline anchored from the source's {anchored.chunks} chunks (sample {anchored.sample})",
        }
    result = stats.compare(base.profile, sample.vectors, sample.tokens, rules(settings)).to_json()
    result.update(model_id=model_id, baseline_id=base.id, baseline_origin=base.origin, chunks=sample.total)
    if result["status"] == "insufficient":
        result["reason"] = (
            f"{sample.total} chunks, fewer than the {settings.min_chunks} a drift score needs: no alarm either way"
        )
    return result


def reset(
    conn: Connection, settings: DriftSettings, source_id: int, model_id: int, *, last_run: bool = False
) -> Anchored | None:
    """Re-anchor the source's baseline in ``model_id``: from a sample of its stored chunks, or (``last_run``)
    of the chunks committed by its latest run that committed at least ``drift.min_chunks``. None when there
    are fewer than that to anchor on (the baseline is then dropped, and the next runs anchor one as on a first
    ingest)."""
    if last_run:
        run_id = baselines.last_writing_run(conn, source_id, settings.min_chunks)
        sample = (
            baselines.run_sample(conn, run_id, source_id, model_id, settings.sample)
            if run_id is not None
            else baselines.Sample.empty()
        )
        origin = baselines.ORIGIN_LAST_RUN
    else:
        run_id = None
        sample = baselines.source_sample(conn, source_id, model_id, settings.sample)
        origin = baselines.ORIGIN_RESET
    if sample.total < settings.min_chunks:
        baselines.drop(conn, source_id, model_id)
        return None
    return _anchor(conn, source_id, model_id, sample, origin, run_id)


def check_run(pipeline: Pipeline, run: Run) -> None:
    """Compare what ``run`` committed with its source's baseline (anchoring one once the source holds enough
    chunks); keep the result on the run's row, set the gauges, warn and publish on an alert. Runs that
    committed nothing are not measured (nothing to compare: a no-op run costs no query)."""
    settings = pipeline.settings.drift
    if not settings.enabled or run.counts.committed == 0:
        return
    source = run.source
    try:

        def work() -> dict[str, Any]:
            result = measure(pipeline.conn, settings, source.id, run.id, pipeline.model_id())
            baselines.record_drift(pipeline.conn, run.id, result)
            return result

        result = pipeline.retrying(work)
    except Exception:  # drift is watched, never in the way: the run keeps its outcome
        log.warning("could not measure the embedding drift of run %d of %s", run.id, source.name, exc_info=True)
        return
    _publish(pipeline.conn, source.name, source.tenant, run.id, result)


def _publish(conn: Connection, source: str, tenant: str, run_id: int, result: dict[str, Any]) -> None:
    from flows import artifacts  # not at import: flows.artifacts imports flows.runs, which imports this

    if result["score"] is not None:
        DRIFT_SCORE.labels(source, tenant).set(result["score"])
        DRIFT_ALERT.labels(source, tenant).set(1 if result["alert"] else 0)
    run_logger = _run_logger()
    # This module's logger reaches the console (the CLI's stderr, the service's log); inside a flow run the
    # run's logger also puts the line in the Prefect UI (this module's logger is not one Prefect ships).
    for logger in (log,) if run_logger is None else (log, run_logger):
        if result["alert"]:
            logger.warning("%s", artifacts.drift_warning(source, run_id, result))
        else:
            logger.info("%s", artifacts.drift_line(result))
    if run_logger is not None:  # in a flow run: the drift artifact, beside the counts artifact
        from prefect.artifacts import create_markdown_artifact

        try:
            canaries = [c for c in baselines.canary_states(conn) if c["model_id"] == result.get("model_id")]
            create_markdown_artifact(
                artifacts.drift_markdown(source, tenant, run_id, result, canaries),
                key=artifacts.drift_key(source),
                description=artifacts.drift_description(source, result),
            )
        except Exception:  # the UI's copy only: the drift is on the run's row and in the log
            log.warning("could not publish the drift artifact of run %d of %s", run_id, source, exc_info=True)


def _run_logger() -> Any:
    """The flow run's logger inside a Prefect flow run (the UI shows its lines), else None. Prefect is looked
    at only when already imported: a run without Prefect (the CLI's no-op ingest) never loads it."""
    if "prefect" not in sys.modules:
        return None
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() is None:
        return None
    return get_run_logger()
