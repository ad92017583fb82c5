"""``ragline search``, ``ragline status`` and ``ragline quarantine list|retry``: what the store holds.

Search, status and the quarantine list only read: they ask a running ``ragline serve`` first (warm model and
pool: a search in a fraction of a second), else work in-process; either way they never import Prefect or start
its server, and print the same.
``quarantine retry`` ingests the released PDFs again through ``ingest_cmd.run_pdf_ingest``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from flows.counts import Counts
from ragline.client import warm_call
from ragline.context import Context, fail
from ragline.ingest_cmd import run_pdf_ingest


@click.command()
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
    obj: Context,
    query: str,
    k: int,
    source: str | None,
    tenant: str | None,
    filters: tuple[str, ...],
    mode: str | None,
    exact: bool,
    as_json: bool,
) -> None:
    """Semantic search over the ingested chunks (of the model generation that serves search): answered by a
    running `ragline serve` when there is one, else in this process."""
    if not query.strip():
        fail("the query is empty")
    metadata: dict[str, Any] = {}
    for item in filters:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--filter {item!r}: expected KEY=VALUE")
        try:
            metadata[key] = json.loads(raw)
        except json.JSONDecodeError:
            metadata[key] = raw
    body = {"query": query, "k": k, "mode": mode, "tenant": tenant, "source": source}
    body |= {"filters": metadata or None, "exact": exact}
    answer = warm_call("POST", "/v1/search", json=body)
    hits: list[dict[str, Any]] = answer["hits"] if answer is not None else _search_here(obj, body)
    if as_json:
        click.echo(json.dumps(hits, ensure_ascii=False))
        return
    if not hits:
        click.echo("no results")
    for rank, h in enumerate(hits, start=1):
        where = f"{h['uri']}" + (f" p.{h['page']}" if h["page"] is not None else "")
        snippet = " ".join(h["text"].split())
        click.echo(f"{rank}. [{h['score']:.3f}] {where}\n   {snippet[:300]}{'...' if len(snippet) > 300 else ''}")


def _search_here(obj: Context, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The search in this process: the query model alone (no worker pool, no calibration) and one connection."""
    from vectorstore.search import SearchFilter

    svc = obj.services
    update: dict[str, Any] = {}
    if body["mode"] is not None:
        update["mode"] = body["mode"]
    if body["exact"]:
        update["exact"] = "always"
    settings = svc.settings.search.model_copy(update=update)
    scope = SearchFilter(source=body["source"], tenant=body["tenant"], metadata=body["filters"])
    return [h.as_json() for h in svc.search(body["query"], body["k"], settings=settings, where=scope)]


# -- status -----------------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print an object with documents, chunks, quarantined, sources.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """What the store holds, per source (from a running `ragline serve` when there is one)."""
    data = warm_call("GET", "/v1/status")
    if data is None:
        from flows.reports import status_report

        data = status_report(obj.services.conn, obj.settings)
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
        if s.get("drift"):
            click.echo(f"    {s['drift']['summary']}")
    for g in data["generations"]:
        pending = f", {g['pending_documents']} documents to re-embed" if "pending_documents" in g else ""
        index = "indexed" if g["indexed"] else "no index"
        click.echo(
            f"  model {g['name']} ({g['revision']}, dim {g['dim']}): {g['state']}, {g['chunks']} chunks, "
            f"{index}{pending}"
        )
    for c in data.get("canary", []):
        stopped = ": WRITES STOPPED (`ragline canary accept` once resolved)" if c["writes_stopped"] else ""
        cosine = "-" if c["min_cosine"] is None else f"{c['min_cosine']:.4f}"
        click.echo(f"  canary {c['model']}: {c['status']}, worst cosine {cosine}{stopped}")
    for b in data.get("embedding", []):
        click.echo(f"  embedding {b['summary']}")
    if data["prefect_ui"]:
        click.echo(f"Prefect UI: {data['prefect_ui']}")


# -- quarantine -------------------------------------------------------------------------------------------


@click.group()
def quarantine() -> None:
    """Documents that could not be ingested, and why."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def quarantine_list(obj: Context, as_json: bool) -> None:
    rows = warm_call("GET", "/v1/quarantine")
    if rows is None:
        from flows.reports import quarantine_report

        rows = quarantine_report(obj.services.conn)
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
def quarantine_retry(obj: Context, ids: tuple[int, ...]) -> None:
    """Try quarantined documents again now (all of them without IDs)."""
    from vectorstore import ledger

    conn = obj.services.conn
    rows = ledger.quarantined(conn, list(ids) if ids else None)
    if ids:
        unknown = sorted(set(ids) - {r["id"] for r in rows})
        if unknown:
            fail(f"not quarantined: {', '.join(map(str, unknown))} (see `ragline quarantine list`)")
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
