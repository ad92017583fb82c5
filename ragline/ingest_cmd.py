"""``ragline ingest pdf|source|all``: run the ingest flows with a progress bar, and summarise their counts.

A PDF ingest plans against the ledger without Prefect and starts a flow only when there is work, so an
ingest with nothing to do stays fast. A run whose deletions the mass-delete guard held exits non-zero with
one line naming the source and ``--allow-mass-delete``, which confirms them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import click

from flows import progress
from flows.counts import Counts
from ragline.context import Context, fail


@click.group()
def ingest() -> None:
    """Ingest documents into the vector store."""


class _ProgressBar:
    """A progress bar on a terminal; on a pipe, a line every 10% so logs stay short."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._total = 0
        self._done = 0
        self._last_pct = -1

    def start(self, total: int) -> None:
        self._total = total
        if self._tty and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("ingesting"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("ingest", total=total)

    def advance(self, event: str, external_id: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
        elif self._total >= 20:
            pct = self._done * 100 // self._total
            if pct // 10 > self._last_pct // 10:
                self._last_pct = pct
                click.echo(f"ragline: {self._done}/{self._total} documents ({pct}%)", err=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _summary(counts: dict[str, int], seconds: float) -> str:
    c = Counts(**counts)
    parts = [
        f"{c.committed} ingested ({c.chunks_written} chunks embedded, {c.chunks_reused} reused)",
        f"{c.unchanged} unchanged",
        f"{c.quarantined} quarantined",
        f"{c.deleted} deleted",
    ]
    if c.still_quarantined:
        parts.append(f"{c.still_quarantined} still quarantined")
    return f"{c.seen} documents seen: " + ", ".join(parts) + f" in {seconds:.1f} s"


_ALLOW_HELP = "Apply deletions the mass-delete guard holds (more than `deletes.max_share` of a source gone)."


class _PrefectInBackground:
    """Prefect pointed at its server on a thread, starting the local one if it is not running (a first run's
    ~6-9 s), and, once the run is known to need a flow (``flows_needed``), the flows imported (~1-2 s), so that
    both overlap opening the store, planning, loading the model and the work done ahead. A run with nothing to
    do never waits, nor imports Prefect (the server it started serves the next run)."""

    def __init__(self, obj: Context) -> None:
        self._settings = obj.settings
        self._failure: list[BaseException] = []
        self._needed = threading.Event()
        self._thread = threading.Thread(target=self._point, name="prefect-server", daemon=True)
        self._thread.start()

    def flows_needed(self) -> None:
        self._needed.set()

    def _point(self) -> None:
        from flows.prefect_server import configure_pending

        try:
            server = configure_pending(self._settings.home, self._settings.prefect)
            self._needed.wait()
            from telemetry import tracing

            tracing.setup()  # before the flow starts: Prefect's flow span joins the run's trace when traced
            import flows.ingest  # noqa: F401 - Prefect's own import, done while the main thread works

            if server is not None:
                server.wait()  # a first run's server started meanwhile
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread, which raises it
            self._failure.append(err)

    def ready(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self.flows_needed()
        self._thread.join()
        if self._failure:
            raise self._failure[0]


def _prepare_int8(obj: Context, counts: dict[str, int]) -> None:
    """After a run that embedded, on ``precision: auto``: the int8 export and a calibration with it are built
    in a detached child at the lowest CPU priority (15-60 s of CPU, once per home), so that later runs find int8
    offered and measured without ``ragline serve``; this run never waited for them."""
    from embedding.backend_status import calibration_dir
    from embedding.int8_export import export_in_background
    from embedding.pool import EmbeddingPool

    embedding = obj.settings.embedding
    embedder = obj.services.embedder
    if not counts.get("embedded_tokens") or embedding.precision != "auto" or not embedding.pool.prepare_in_background:
        return
    if not isinstance(embedder, EmbeddingPool):
        return
    started = export_in_background(
        embedder.tokenizer.model_dir,
        embedder.revision,
        embedder.max_seq_length,
        calibration_dir(embedding, obj.settings.home),
        calibrate=embedding.model_dump_json(),
        detach=True,
    )
    if started is not None:
        click.echo(
            f"ragline: preparing the int8 model in the background (pid {started.pid}, lowest priority): later runs "
            "embed faster",
            err=True,
        )


def run_pdf_ingest(obj: Context, paths: list[str], source: str, allow_mass_delete: bool = False) -> dict[str, int]:
    """Plan without Prefect (no file is read whose stat matches the ledger); run the flow, handing it this
    plan, only when there is something to do. A run with nothing to do is still recorded (and settles
    deletions earlier runs held)."""
    from embedding.pool import EmbeddingPool
    from flows.ahead import embed_ahead, forget
    from flows.pdfs import plan_pdfs, run_pdf_plan, write_plan
    from flows.planning import resolve_source
    from flows.runs import recorded_run
    from flows.settings import store_is_new

    svc = obj.services
    prefect = _PrefectInBackground(obj)  # a first run's server starts while the store opens and plans
    if store_is_new(svc.settings) and isinstance(svc.embedder, EmbeddingPool):
        svc.embedder.start()  # a first run: every document is new, so the model loads while the store is made
    ref = resolve_source(svc.conn, svc.settings, source, "pdf")
    plan = plan_pdfs(svc.pipeline, ref, paths)
    if plan.empty:
        with recorded_run(svc.pipeline, ref) as run:
            run_pdf_plan(svc.pipeline, plan, run.counts, allow_mass_delete=allow_mass_delete)
        return run.counts.as_dict()

    prefect.flows_needed()
    if plan.work and isinstance(svc.embedder, EmbeddingPool):
        svc.embedder.start()  # the model loads (and calibrates) on its worker threads while Prefect gets ready
    embed_ahead(svc.pipeline, plan, prefect.ready)
    prefect.wait()
    from flows.ingest import ingest_pdf, interactive

    plan_file = write_plan(svc.settings.home, plan)
    progress.listen(_ProgressBar())
    try:
        absolute = [str(Path(p).absolute()) for p in paths]
        with interactive():
            result = cast(
                dict[str, int],
                ingest_pdf(absolute, source, plan_file=str(plan_file), allow_mass_delete=allow_mass_delete),
            )
    finally:
        progress.listen(None)
        plan_file.unlink(missing_ok=True)
        forget(svc.pipeline)
    return result


@ingest.command("pdf")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--source", default="pdf", show_default=True, help="Source name these files are recorded under.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
@click.option("--allow-mass-delete", is_flag=True, help=_ALLOW_HELP)
@click.pass_obj
def ingest_pdf_cmd(obj: Context, paths: tuple[str, ...], source: str, as_json: bool, allow_mass_delete: bool) -> None:
    """Ingest PDF files and directories (recursive)."""
    for p in paths:
        if not Path(p).exists():
            fail(f"no such file or directory: {p}")
    from flows.delete_guard import DeletionsHeld

    started = time.monotonic()
    try:
        counts = run_pdf_ingest(obj, list(paths), source, allow_mass_delete)
    except DeletionsHeld as held:
        fail(str(held))
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(_summary(counts, time.monotonic() - started))
        if counts.get("quarantined"):
            click.echo("ragline: some documents were quarantined: see `ragline quarantine list`", err=True)
    _prepare_int8(obj, counts)


def _run_sources(
    obj: Context, names: list[str], allow_mass_delete: bool
) -> list[tuple[str, dict[str, int] | None, str | None]]:
    from flows.delete_guard import DeletionsHeld

    for name in names:
        obj.settings.source(name)  # unknown names fail before anything runs
    prefect = _PrefectInBackground(obj)
    _ = obj.services.conn  # the store opens (and migrates) while Prefect gets ready; the model loads on demand
    prefect.wait()
    from flows.ingest import ingest_source, interactive

    results: list[tuple[str, dict[str, int] | None, str | None]] = []
    for name in names:
        progress.listen(_ProgressBar())
        try:
            with interactive():
                results.append((name, cast(dict[str, int], ingest_source(name, allow_mass_delete)), None))
        except DeletionsHeld as held:
            results.append((name, None, str(held)))
        except Exception as err:  # noqa: BLE001 - one failed source must not stop the others
            results.append((name, None, f"{type(err).__name__}: {err}".splitlines()[0]))
        finally:
            progress.listen(None)
    _prepare_int8(obj, {"embedded_tokens": sum((c or {}).get("embedded_tokens", 0) for _, c, _ in results)})
    return results


def _report_sources(
    results: list[tuple[str, dict[str, int] | None, str | None]], as_json: bool, seconds: float
) -> None:
    if as_json:
        click.echo(json.dumps({name: {"counts": c, "error": e} for name, c, e in results}))
    for name, counts, error in results:
        if error is not None:
            click.echo(f"ragline: error: source {name} failed: {error}", err=True)
        elif not as_json and counts is not None:
            click.echo(f"{name}: " + _summary(counts, seconds))
    if any(error for _, _, error in results):
        sys.exit(1)


@ingest.command("source")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
@click.option("--allow-mass-delete", is_flag=True, help=_ALLOW_HELP)
@click.pass_obj
def ingest_source_cmd(obj: Context, name: str, as_json: bool, allow_mass_delete: bool) -> None:
    """Run one source of the config file (from its saved cursor)."""
    started = time.monotonic()
    _report_sources(_run_sources(obj, [name], allow_mass_delete), as_json, time.monotonic() - started)


@ingest.command("all")
@click.option("--json", "as_json", is_flag=True, help="Print every source's counts as JSON.")
@click.option("--allow-mass-delete", is_flag=True, help=_ALLOW_HELP)
@click.pass_obj
def ingest_all_cmd(obj: Context, as_json: bool, allow_mass_delete: bool) -> None:
    """Run every source of the config file; a failed source does not stop the others (exit 1 at the end)."""
    names = [s.name for s in obj.settings.sources]
    if not names:
        fail("no sources configured (set RAGLINE_CONFIG to a file with a `sources:` list)")
    started = time.monotonic()
    _report_sources(_run_sources(obj, names, allow_mass_delete), as_json, time.monotonic() - started)
