"""``ragline generation status|migrate``: model generations of the store (vectorstore.generations).

``migrate`` re-embeds the stored chunks with the configured model while search keeps serving the old
generation, builds the new generation's index and switches search to it (flows.reembed). It can be stopped
at any time and run again: it resumes with the documents still pending.
"""

from __future__ import annotations

import json

import click

from ragline.context import Context


@click.group()
def generation() -> None:
    """Model generations: which model serves search, and the re-embed into a newly configured one."""


@generation.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of generations.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Generations holding vectors: the serving one, the one being built (with documents still to
    re-embed), retired ones not yet purged."""
    from vectorstore import generations

    rows = generations.overview(obj.services.conn)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    configured = obj.services.embedder.identity
    for g in rows:
        pending = f", {g['pending_documents']} documents to re-embed" if "pending_documents" in g else ""
        mark = (
            " (configured)"
            if (g["name"], g["revision"], g["dim"])
            == (
                configured.name,
                configured.revision,
                configured.dim,
            )
            else ""
        )
        click.echo(
            f"{g['state']:9} {g['name']} ({g['revision']}, dim {g['dim']}){mark}: {g['chunks']} chunks, "
            f"{'indexed' if g['indexed'] else 'no index'}{pending}"
        )


@generation.command("migrate")
@click.option("--batch", "batch_documents", default=32, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--no-switch", is_flag=True, help="Re-embed only; leave search on the serving generation.")
@click.pass_obj
def migrate(obj: Context, batch_documents: int, no_switch: bool) -> None:
    """Re-embed into the configured model's generation, then switch search to it."""
    from flows.reembed import migrate_generation

    def report(result: object) -> None:
        done = getattr(result, "documents", 0) + getattr(result, "skipped", 0)
        click.echo(f"  {done}/{getattr(result, 'planned', 0)} documents", err=True)

    result = migrate_generation(
        obj.services.pipeline, batch_documents=batch_documents, switch=not no_switch, after_batch=report
    )
    if not result.planned and not result.switched:
        purged = f"; purged {result.purged} old chunks" if result.purged else ""
        click.echo(f"nothing to re-embed: {result.target} serves search{purged}")
        return
    click.echo(
        f"re-embedded {result.documents} documents ({result.chunks} chunks, {result.recut} re-cut) into "
        f"{result.target} in {result.seconds:.1f} s; "
        + ("search now served by it" if result.switched else "search still served by " + str(result.serving))
    )
