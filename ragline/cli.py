"""The ``ragline`` command line. Every command exits 0 on success, or non-zero with one line on stderr.

Commands that only read (status, search, quarantine list) and ingests with nothing to do never import
Prefect or start its server: planning against the ledger is plain ragline, and a flow runs only when there
is work, so the common commands stay fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from flows import progress
from flows.pipeline import Counts
from flows.runtime import Services, use_services
from flows.settings import ConfigError, RaglineSettings, load_settings

log = logging.getLogger("ragline")

_OUR_LOGGERS = ("ragline", "connectors", "embedding", "vectorstore", "flows")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ragline: %(levelname)s: %(message)s"))
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        logger.propagate = False


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ragline: error: {message}", err=True)
    sys.exit(code)


class _Context:
    def __init__(self) -> None:
        self._settings: RaglineSettings | None = None
        self._services: Services | None = None

    @property
    def settings(self) -> RaglineSettings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def services(self) -> Services:
        if self._services is None:
            self._services = Services(self.settings)
            use_services(self._services)
        return self._services


def _known_errors() -> tuple[type[BaseException], ...]:
    from embedding.chunking import ChunkTooLongError
    from embedding.model import ModelNotFoundError
    from flows.prefect_server import PrefectServerError
    from vectorstore.db import DatabaseError
    from vectorstore.ledger import SourceKindMismatchError

    return (
        ConfigError,
        DatabaseError,
        FileNotFoundError,
        ModelNotFoundError,
        PrefectServerError,
        SourceKindMismatchError,
        ChunkTooLongError,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what ragline does.")
@click.version_option(package_name="ragline")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """ragline: ingest PDFs and SaaS sources into Postgres + pgvector, and search them."""
    _setup_logging(verbose)
    ctx.obj = _Context()


# -- ingest -----------------------------------------------------------------------------------------------


@cli.group()
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


def run_pdf_ingest(obj: _Context, paths: list[str], source: str) -> dict[str, int]:
    """Plan without Prefect; run the flow only when there is something to do."""
    from connectors.pdf import PdfConnector
    from vectorstore import runs

    svc = obj.services
    connector = PdfConnector([Path(p) for p in paths], svc.settings.pdf)
    source_id = svc.pipeline.source_id(source, "pdf")
    plan = svc.pipeline.plan(source_id, connector.iter_documents(), connector.covers)
    if plan.empty:
        run_id = runs.start_run(svc.conn, source_id)
        runs.finish_run(svc.conn, run_id, "completed", plan.counts.as_dict())
        return plan.counts.as_dict()

    from flows.prefect_server import configure

    configure(svc.settings.home, svc.settings.prefect)
    from flows.ingest import ingest_pdf

    progress.listen(_ProgressBar())
    try:
        result = cast(dict[str, int], ingest_pdf([str(Path(p).absolute()) for p in paths], source))
    finally:
        progress.listen(None)
    return result


@ingest.command("pdf")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--source", default="pdf", show_default=True, help="Source name these files are recorded under.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
@click.pass_obj
def ingest_pdf_cmd(obj: _Context, paths: tuple[str, ...], source: str, as_json: bool) -> None:
    """Ingest PDF files and directories (recursive)."""
    for p in paths:
        if not Path(p).exists():
            _fail(f"no such file or directory: {p}")
    started = time.monotonic()
    counts = run_pdf_ingest(obj, list(paths), source)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(_summary(counts, time.monotonic() - started))
        if counts.get("quarantined"):
            click.echo("ragline: some documents were quarantined: see `ragline quarantine list`", err=True)


def _run_sources(obj: _Context, names: list[str]) -> list[tuple[str, dict[str, int] | None, str | None]]:
    from flows.prefect_server import configure

    for name in names:
        obj.settings.source(name)  # unknown names fail before anything runs
    svc = obj.services
    configure(svc.settings.home, svc.settings.prefect)
    from flows.ingest import ingest_source

    results: list[tuple[str, dict[str, int] | None, str | None]] = []
    for name in names:
        progress.listen(_ProgressBar())
        try:
            results.append((name, cast(dict[str, int], ingest_source(name)), None))
        except Exception as err:  # noqa: BLE001 - one failed source must not stop the others
            results.append((name, None, f"{type(err).__name__}: {err}".splitlines()[0]))
        finally:
            progress.listen(None)
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
@click.pass_obj
def ingest_source_cmd(obj: _Context, name: str, as_json: bool) -> None:
    """Run one source of the config file (from its saved cursor)."""
    started = time.monotonic()
    _report_sources(_run_sources(obj, [name]), as_json, time.monotonic() - started)


@ingest.command("all")
@click.option("--json", "as_json", is_flag=True, help="Print every source's counts as JSON.")
@click.pass_obj
def ingest_all_cmd(obj: _Context, as_json: bool) -> None:
    """Run every source of the config file; a failed source does not stop the others (exit 1 at the end)."""
    names = [s.name for s in obj.settings.sources]
    if not names:
        _fail("no sources configured (set RAGLINE_CONFIG to a file with a `sources:` list)")
    started = time.monotonic()
    _report_sources(_run_sources(obj, names), as_json, time.monotonic() - started)


# -- search -----------------------------------------------------------------------------------------------


@cli.command()
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 1000), help="Results to return.")
@click.option("--source", default=None, help="Only search this source.")
@click.option("--tenant", default=None, help="Only search this tenant's chunks (enforced by Postgres with RLS).")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only documents whose metadata has KEY equal to VALUE (JSON value, else a string); repeatable.",
)
@click.option(
    "--mode", type=click.Choice(["hybrid", "vector"]), default=None, help="Override search.mode of the config."
)
@click.option("--exact", is_flag=True, help="Exact (sequential) vector search instead of the HNSW index.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, best first.")
@click.pass_obj
def search(
    obj: _Context,
    query: str,
    k: int,
    source: str | None,
    tenant: str | None,
    filters: tuple[str, ...],
    mode: str | None,
    exact: bool,
    as_json: bool,
) -> None:
    """Semantic search over the ingested chunks (of the model generation that serves search)."""
    from vectorstore.store import SearchFilter

    if not query.strip():
        _fail("the query is empty")
    metadata: dict[str, Any] = {}
    for item in filters:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _fail(f"--filter {item!r}: expected KEY=VALUE")
        try:
            metadata[key] = json.loads(raw)
        except json.JSONDecodeError:
            metadata[key] = raw
    svc = obj.services
    update: dict[str, Any] = {}
    if mode is not None:
        update["mode"] = mode
    if exact:
        update["exact"] = "always"
    settings = svc.settings.search.model_copy(update=update)
    scope = SearchFilter(source=source, tenant=tenant, metadata=metadata or None)
    hits = svc.search(query, k, settings=settings, where=scope)
    if as_json:
        click.echo(json.dumps([h.as_json() for h in hits], ensure_ascii=False))
        return
    if not hits:
        click.echo("no results")
    for rank, h in enumerate(hits, start=1):
        where = f"{h.uri}" + (f" p.{h.page}" if h.page is not None else "")
        snippet = " ".join(h.text.split())
        click.echo(f"{rank}. [{h.score:.3f}] {where}\n   {snippet[:300]}{'...' if len(snippet) > 300 else ''}")


# -- status -----------------------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print an object with documents, chunks, quarantined, sources.")
@click.pass_obj
def status(obj: _Context, as_json: bool) -> None:
    """What the store holds, per source."""
    from flows.prefect_server import running_server
    from vectorstore import store

    data = store.status(obj.services.conn)
    server = running_server(obj.settings.home)
    data["prefect_ui"] = server[1].removesuffix("/api") if server else os.environ.get("PREFECT_API_URL")
    if as_json:
        click.echo(json.dumps(data, default=str))
        return
    click.echo(f"documents: {data['documents']}  chunks: {data['chunks']}  quarantined: {data['quarantined']}")
    for name, s in data["sources"].items():
        last = s["last_run"] or {}
        click.echo(
            f"  {name} ({s['kind']}): {s['documents']} documents, {s['chunks']} chunks, "
            f"{s['quarantined']} quarantined; last run {last.get('status', '-')} {last.get('finished_at') or ''}"
        )
    for g in data["generations"]:
        pending = f", {g['pending_documents']} documents to re-embed" if "pending_documents" in g else ""
        index = "indexed" if g["indexed"] else "no index"
        click.echo(
            f"  model {g['name']} ({g['revision']}, dim {g['dim']}): {g['state']}, {g['chunks']} chunks, "
            f"{index}{pending}"
        )
    if data["prefect_ui"]:
        click.echo(f"Prefect UI: {data['prefect_ui']}")


# -- quarantine -------------------------------------------------------------------------------------------


@cli.group()
def quarantine() -> None:
    """Documents that could not be ingested, and why."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def quarantine_list(obj: _Context, as_json: bool) -> None:
    from vectorstore import ledger

    rows = ledger.quarantined(obj.services.conn)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        click.echo("nothing is quarantined")
    for r in rows:
        click.echo(f"{r['id']}\t{r['source']}\t{r['uri']}\t{r['reason']}: {r['error']} (attempts: {r['attempts']})")


@quarantine.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_obj
def quarantine_retry(obj: _Context, ids: tuple[int, ...]) -> None:
    """Try quarantined documents again now (all of them without IDs)."""
    from vectorstore import ledger

    conn = obj.services.conn
    rows = ledger.quarantined(conn, list(ids) if ids else None)
    if ids:
        unknown = sorted(set(ids) - {r["id"] for r in rows})
        if unknown:
            _fail(f"not quarantined: {', '.join(map(str, unknown))} (see `ragline quarantine list`)")
    if not rows:
        click.echo("nothing is quarantined")
        return
    ledger.release(conn, [r["id"] for r in rows])
    by_source: dict[str, list[str]] = {}
    later: list[str] = []
    for r in rows:
        if r["kind"] == "pdf" and Path(r["external_id"]).exists():
            by_source.setdefault(r["source"], []).append(r["external_id"])
        else:
            later.append(r["source"])
    total = Counts()
    for source, files in by_source.items():
        total.merge(Counts(**run_pdf_ingest(obj, files, source)))
    click.echo(
        f"retried {total.committed + total.quarantined}: {total.committed} ingested, "
        f"{total.quarantined} quarantined again"
    )
    if later:
        click.echo(f"{len(later)} more will be retried at the next run of: {', '.join(sorted(set(later)))}")


# -- stop -------------------------------------------------------------------------------------------------


@cli.command()
@click.pass_obj
def stop(obj: _Context) -> None:
    """Stop the background services ragline started under RAGLINE_HOME (embedded Postgres, Prefect)."""
    from flows.prefect_server import stop_local_server
    from vectorstore.embedded import stop_embedded

    stopped = []
    if stop_local_server(obj.settings.home):
        stopped.append("prefect server")
    if obj.settings.database.url is None and stop_embedded(obj.settings.home):
        stopped.append("embedded postgres")
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


from ragline.generation_cmd import generation as _generation_group  # noqa: E402
from ragline.snapshot_cmd import snapshot as _snapshot_group  # noqa: E402

cli.add_command(_snapshot_group)
cli.add_command(_generation_group)

from ragline.serve_cmd import deploy as _deploy_group  # noqa: E402
from ragline.serve_cmd import serve as _serve_cmd  # noqa: E402
from ragline.serve_cmd import trigger as _trigger_group  # noqa: E402

cli.add_command(_serve_cmd)
cli.add_command(_trigger_group)
cli.add_command(_deploy_group)


def main() -> None:
    known = _known_errors()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except known as err:
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:
        if os.environ.get("RAGLINE_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        _fail(f"unexpected {type(err).__name__}: {first} (set RAGLINE_DEBUG=1 for the traceback)", 2)
