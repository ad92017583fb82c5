"""What an ingest run shows in the Prefect UI, as pure functions of its counts and timing.

The flows publish these as artifacts: one markdown artifact per run under a key per source (so the Artifacts
page keeps each source's history), and a progress artifact while documents are processed. Nothing here talks
to Prefect, so the wording and the numbers are tested without a server.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.counts import Counts
from flows.runs import outcome
from vectorstore.runs import RunStatus

RUN_TAG = "ragline"
QUARANTINE_TAG = "quarantined"
"""Added to a run that quarantined documents, so such runs can be filtered in the UI."""

_NOT_KEY_CHARS = re.compile(r"[^a-z0-9]+")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")
_ERROR_CHARS = 500


def _key_part(source: str) -> str:
    """A key-safe form of ``source``. Prefect keys allow only lowercase letters, digits and dashes; where the
    name had to change, a short hash of it keeps two names apart that fold to the same letters
    ("CRM EU" and "crm-eu")."""
    slug = _NOT_KEY_CHARS.sub("-", source.lower()).strip("-")
    if slug == source and slug:
        return slug
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def counts_key(source: str) -> str:
    """Key of the counts artifact of ``source``'s runs (the same for every run: the UI keeps its history)."""
    return f"ragline-counts-{_key_part(source)}"


def progress_key(source: str) -> str:
    """Key of the progress artifact of ``source``'s runs."""
    return f"ragline-progress-{_key_part(source)}"


def run_tags(source: str, kind: str) -> list[str]:
    """Tags of a source's flow and task runs: filter runs per source or per kind in the UI."""
    return [RUN_TAG, f"source:{source}", f"kind:{kind}"]


def count_rows(counts: Counts) -> list[tuple[str, int]]:
    """The counts an operator reads, in the order the pipeline produces them. Every row is always present,
    so runs of all kinds compare line by line."""
    return [
        ("fetched", counts.seen),
        ("new", counts.new),
        ("changed", counts.changed),
        ("skipped unchanged", counts.unchanged),
        ("done by another run", counts.done_elsewhere),
        ("embedded documents", counts.committed),
        ("embedded chunks", counts.chunks_written),
        ("reused chunks", counts.chunks_reused),
        ("embedded tokens", counts.embedded_tokens),
        ("bytes read", counts.bytes_read),
        ("deleted", counts.deleted),
        ("deletions held", counts.deletions_held),
        ("quarantined", counts.quarantined),
        ("still quarantined (retry not due)", counts.still_quarantined),
        ("quarantined retried", counts.retried),
        ("HTTP requests", counts.http_requests),
        ("HTTP retries", counts.http_retries),
        ("throttled calls", counts.throttled),
    ]


@dataclass(frozen=True)
class Throughput:
    """Rates over the run's wall time; None where the time is too short to divide by."""

    seconds: float
    documents_per_second: float | None
    chunks_per_second: float | None
    tokens_per_second: float | None


def throughput(counts: Counts, seconds: float) -> Throughput:
    """Documents processed (committed or quarantined), chunks and tokens embedded, per second."""

    def rate(n: int) -> float | None:
        return n / seconds if seconds > 0 else None

    return Throughput(
        seconds=seconds,
        documents_per_second=rate(counts.committed + counts.quarantined),
        chunks_per_second=rate(counts.chunks_written),
        tokens_per_second=rate(counts.embedded_tokens),
    )


def headline(counts: Counts, error: str | None = None) -> str:
    """One line that says how the run ended, the first thing read on the artifact."""
    result = outcome(counts, error)
    if result is RunStatus.FAILED:
        return "Failed"
    if result is RunStatus.COMPLETED_WITH_QUARANTINE:
        return f"Completed with {_plural(counts.quarantined, 'quarantined document')}"
    return "Completed"


def counts_markdown(
    source: str,
    kind: str,
    counts: Counts,
    seconds: float,
    error: str | None = None,
    backends: Sequence[str] = (),
) -> str:
    """The counts artifact: how the run ended, its throughput, a table of its counts and what to do next.
    ``backends``: one line per embedding device, the backend and precision it runs and, where int8 was
    calibrated, its gate figures (``embedding.backend_status.BackendStatus.describe``)."""
    rates = throughput(counts, seconds)
    lines = [
        f"## {headline(counts, error)}",
        "",
        f"Source **{escape_markdown(source)}** ({escape_markdown(kind)}), {seconds:.1f} s: "
        + ", ".join(
            f"{_rate(value)} {unit}/s"
            for value, unit in (
                (rates.documents_per_second, "documents"),
                (rates.chunks_per_second, "chunks"),
                (rates.tokens_per_second, "tokens"),
            )
        ),
        "",
    ]
    if backends:
        lines += ["Embedding: " + "; ".join(escape_markdown(line) for line in backends), ""]
    if error is not None:
        lines += [f"**Error:** {escape_markdown(short_error(error))}", ""]
        lines += ["Counts below are what the run committed before it stopped.", ""]
    lines += ["| count | value |", "|:--|--:|", *(f"| {name} | {value} |" for name, value in count_rows(counts))]
    if counts.deletions_held:
        lines += ["", f"{_plural(counts.deletions_held, 'deletion')} held by the mass-delete guard: their chunks stay"]
        lines += ["searchable until a run with `--allow-mass-delete` (or `deletes.allow_mass: true`) applies them."]
    if counts.quarantined or counts.still_quarantined:
        lines += ["", "`ragline quarantine list` shows why documents were quarantined; `ragline quarantine retry`"]
        lines += ["tries them again once fixed."]
    return "\n".join(lines) + "\n"


def counts_description(source: str, counts: Counts, error: str | None = None) -> str:
    """The artifact's one-line summary, shown in artifact lists."""
    return f"ragline ingest of {source}: {headline(counts, error).lower()}"


def short_error(error: str) -> str:
    """The first line of an error, bounded: enough to tell what failed; the traceback is in the run's logs."""
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return first if len(first) <= _ERROR_CHARS else first[: _ERROR_CHARS - 3] + "..."


def escape_markdown(text: str) -> str:
    """Source names and error messages come from configs and servers: shown as text, never as markup."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def progress_description(done: int, total: int, quarantined: int) -> str:
    text = f"{done} of {_plural(total, 'document')} processed"
    return text + (f", {quarantined} quarantined" if quarantined else "")


@dataclass
class ProgressGate:
    """Decides when a progress update is worth an API call: each update is one, and a run of ten thousand
    small documents must not make ten thousand. An update goes out when the whole percentage moved and
    ``interval`` seconds passed since the last one, and always when the last document is done."""

    total: int
    interval: float = 2.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    done: int = 0
    quarantined: int = 0
    _percent: int = field(default=0, init=False)
    _at: float = field(default=float("-inf"), init=False)

    def advance(self, event: str) -> float | None:
        """Count one processed document; returns the percentage to publish, or None to stay quiet."""
        self.done += 1
        if event == "quarantined":
            self.quarantined += 1
        percent = self.percent
        now = self.clock()
        finished = self.done >= self.total and self._percent < 100
        if finished or (int(percent) > self._percent and now - self._at >= self.interval):
            self._percent, self._at = int(percent), now
            return percent
        return None

    @property
    def percent(self) -> float:
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.done / self.total)

    def description(self) -> str:
        return progress_description(min(self.done, self.total), self.total, self.quarantined)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


# -- embedding drift (flows.drift) -------------------------------------------------------------------------------


def drift_key(source: str) -> str:
    """Key of the drift artifact of ``source``'s runs (one key: the UI keeps the source's drift history)."""
    return f"ragline-drift-{_key_part(source)}"


def drift_line(drift: dict[str, Any]) -> str:
    """One line on a run's drift (``runs.drift``), for logs and ``ragline status``."""
    status = drift["status"]
    if status == "baseline":
        return f"drift: {drift.get('reason', 'baseline anchored')}"
    if status == "insufficient":
        return f"drift insufficient: {drift.get('reason', 'too few chunks')}"
    parts = drift.get("components", {})
    verdict = "ALERT" if drift["alert"] else "ok"
    return (
        f"drift {verdict}: score {drift['score']:.3f} (threshold {drift['threshold']}) on {drift['sample']} chunks: "
        f"centroid shift {parts.get('centroid_shift', 0):.3f}, cosine KS {parts.get('cosine_ks', 0):.3f} "
        f"(p {parts.get('cosine_ks_pvalue', 1):.2g}), token KS {parts.get('token_ks', 0):.3f}"
    )


def drift_warning(source: str, run_id: int, drift: dict[str, Any]) -> str:
    """The run log's warning on an alert: what moved, and what to do when the change is intended."""
    return (
        f"run {run_id} of source {source!r}: embedding {drift_line(drift)}. What it committed differs from the "
        f"source's baseline ({drift.get('baseline_origin', 'baseline')}): the content, its users or the model "
        f"changed. If this is the new normal, `ragline baseline reset {source} --last-run` re-anchors on it."
    )


def drift_description(source: str, drift: dict[str, Any]) -> str:
    """The drift artifact's one-line summary."""
    if drift["status"] in ("baseline", "insufficient"):
        return f"ragline drift of {source}: {drift['status']}"
    return f"ragline drift of {source}: {'ALERT' if drift['alert'] else 'ok'}, score {drift['score']:.3f}"


def drift_markdown(
    source: str, tenant: str, run_id: int, drift: dict[str, Any], canaries: Sequence[dict[str, Any]] = ()
) -> str:
    """The drift artifact: the verdict, the components against the baseline, and the model canary."""
    status = drift["status"]
    if status in ("baseline", "insufficient"):
        head = "Baseline anchored" if status == "baseline" else "Drift not measured: too few chunks"
    else:
        head = "Drift ALERT" if drift["alert"] else "No drift"
    lines = [
        f"## {head}",
        "",
        f"Source **{escape_markdown(source)}** (tenant {escape_markdown(tenant)}), run {run_id}: "
        + escape_markdown(drift_line(drift)),
        "",
    ]
    parts = drift.get("components") or {}
    if parts:
        lines += ["| measure | value |", "|:--|--:|"]
        lines += [f"| score (alert over {drift['threshold']}) | {drift['score']:.3f} |"]
        lines += [f"| {name.replace('_', ' ')} | {value:.4g} |" for name, value in parts.items()]
        lines += [f"| chunks sampled (run / baseline) | {drift['sample']} / {drift['baseline_sample']} |", ""]
    if drift["alert"]:
        lines += [f"If this is the new normal: `ragline baseline reset {escape_markdown(source)} --last-run`.", ""]
    for c in canaries:
        verdict = "ok" if c["status"] == "ok" else "**MISMATCH: writes into this generation are stopped**"
        cosine = "-" if c["min_cosine"] is None else f"{c['min_cosine']:.4f}"
        lines += [
            f"Model canary ({escape_markdown(str(c['name']))} {escape_markdown(str(c['revision']))}): "
            f"{verdict}, worst cosine {cosine}"
        ]
    return "\n".join(lines) + "\n"
