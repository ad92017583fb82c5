"""``ragline baseline reset`` and ``ragline canary check|accept``: the operator's side of embedding drift
(flows.drift) and of the model canary (flows.canary)."""

from __future__ import annotations

import click

from ragline.context import Context, fail


def _configured_generation(obj: Context) -> tuple[int, str]:
    """The generation of the configured model (the one runs write), without registering one."""
    from flows.canary import generation_of, model_label

    identity = obj.services.embedder.identity
    model_id = generation_of(obj.services.conn, identity)
    if model_id is None:
        fail(f"the configured model {model_label(identity)} has no generation in the store yet: ingest first")
    return model_id, model_label(identity)


@click.group()
def baseline() -> None:
    """Embedding drift baselines, one per source and model generation."""


@baseline.command("reset")
@click.argument("source")
@click.option(
    "--last-run",
    is_flag=True,
    help="Anchor on the chunks of the source's latest run that committed enough of them for a drift score "
    "(accept what an alert was about as the new normal) instead of on everything the source holds.",
)
@click.pass_obj
def reset(obj: Context, source: str, last_run: bool) -> None:
    """Re-anchor SOURCE's baseline now, from a sample of its stored chunks (or of its last run's): the next
    runs are compared with it. Source names are unique across tenants: the tenant is the source's."""
    from flows.drift import reset as reset_baseline
    from vectorstore import baselines

    conn = obj.services.conn
    found = baselines.find_source(conn, source)
    if found is None:
        known = ", ".join(baselines.source_names(conn)) or "none"
        fail(f"no source named {source!r} in the store (sources: {known})")
    source_id, tenant = found
    model_id, label = _configured_generation(obj)
    settings = obj.settings.drift
    anchored = reset_baseline(conn, settings, source_id, model_id, last_run=last_run)
    if anchored is None:
        what = "no run of it committed" if last_run else "it holds fewer than"
        click.echo(
            f"{source} (tenant {tenant}): baseline dropped: {what} {settings.min_chunks} chunks of {label}; the "
            f"next runs anchor a new one once the source holds {settings.baseline_min_chunks}"
        )
        return
    click.echo(
        f"{source} (tenant {tenant}): baseline {anchored.id} anchored ({anchored.origin}) on {anchored.sample} of "
        f"{anchored.chunks} chunks of {label}; the next runs are compared with it"
    )


@click.group()
def canary() -> None:
    """The model canary: fixed texts whose vectors must stay as stored for the model's generation.

    A mismatch (other weights, library or numerics under the same model name and revision) stops writes
    into the generation. Ways out: restore what wrote the generation, then `ragline canary accept` (the
    check matches again); or accept the new numerics as they are with `ragline canary accept` (new vectors
    then sit beside the old ones: check search quality); or configure the new weights as another model
    (a local directory: its revision is their hash) and `ragline generation migrate` into its own generation.
    """


@canary.command("check")
@click.pass_obj
def check_cmd(obj: Context) -> None:
    """Embed the canary texts with the configured model and compare them with the stored vectors."""
    from flows.canary import check

    model_id, label = _configured_generation(obj)
    checked = check(obj.services.conn, obj.services.embedder, model_id, obj.settings.drift.canary_tolerance)
    if checked.stored:
        click.echo(f"{label}: canary vectors stored (first check of generation {model_id})")
        return
    stopped = "; writes into it are STOPPED until `ragline canary accept`" if checked.writes_stopped else ""
    click.echo(f"{label} (generation {model_id}): {checked.result.describe()}{stopped}")
    if checked.writes_stopped:
        raise SystemExit(1)


@canary.command("accept")
@click.pass_obj
def accept_cmd(obj: Context) -> None:
    """Take the configured model's canary vectors as its generation's reference and let writes resume."""
    from flows.canary import accept

    model_id, label = _configured_generation(obj)
    before = accept(obj.services.conn, obj.services.embedder, model_id, obj.settings.drift.canary_tolerance)
    compared = f" (against the replaced reference: {before.describe()})" if before is not None else ""
    click.echo(f"{label} (generation {model_id}): canary vectors accepted, writes resume{compared}")
