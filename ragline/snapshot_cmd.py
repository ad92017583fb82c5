"""``ragline snapshot create|verify|restore``: disaster-recovery snapshots of the store (vectorstore.snapshot).

DEST and SRC are a directory path or an fsspec URL. Errors are one line on stderr and exit 1.
"""

from __future__ import annotations

import click

from ragline.context import Context, fail


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _dims(dims: list[int]) -> str:
    """``384-dim``; ``384- and 768-dim`` while generations of two dimensions hold vectors."""
    if not dims:
        return "no vectors"
    *first, last = (f"{d}-" for d in dims)
    return f"{', '.join(first)} and {last}dim" if first else f"{last}dim"


@click.group()
def snapshot() -> None:
    """Disaster-recovery snapshots: chunks, vectors, ledger, cursors and model identity."""


@snapshot.command("create")
@click.argument("dest")
@click.pass_obj
def create(obj: Context, dest: str) -> None:
    """Write a consistent snapshot of the store to DEST (a directory or fsspec URL holding no snapshot)."""
    from vectorstore.db import DatabaseError
    from vectorstore.snapshot import SnapshotError, create_snapshot

    try:
        manifest = create_snapshot(obj.services.conn, dest)
    except (SnapshotError, DatabaseError) as err:
        fail(str(err))
    size = sum(t.bytes for t in manifest.tables.values())
    click.echo(
        f"snapshot written to {dest}: {manifest.rows('documents')} documents, {manifest.rows('chunks')} chunks "
        f"({_dims(manifest.dims)}), {manifest.rows('sources')} sources, {_size(size)}"
    )


@snapshot.command("verify")
@click.argument("src")
def verify(src: str) -> None:
    """Check a snapshot's manifest, checksums, sizes, row counts and vector dimension (no database needed)."""
    from vectorstore.snapshot import SnapshotError, verify_snapshot

    try:
        manifest = verify_snapshot(src)
    except SnapshotError as err:
        fail(str(err))
    click.echo(
        f"{src}: ok: {manifest.rows('documents')} documents, {manifest.rows('chunks')} chunks, "
        f"schema version {manifest.schema_version}, taken {manifest.created_at}"
    )


@snapshot.command("restore")
@click.argument("src")
@click.option("--force", is_flag=True, help="Restore even if the snapshot's model differs from the configured one.")
@click.pass_obj
def restore(obj: Context, src: str, force: bool) -> None:
    """Restore a snapshot into an empty database (verified first; all or nothing)."""
    from embedding.model import Embedder
    from flows.settings import database_url
    from vectorstore.db import DatabaseError, connect
    from vectorstore.snapshot import SnapshotError, restore_snapshot

    settings = obj.settings
    # A plain connection, not the process's Services: the restore migrates the schema itself, with the
    # snapshot's HNSW options, and nothing may write to the database before it.
    model = Embedder(settings.embedding).identity
    try:
        conn = connect(database_url(settings), connect_timeout=settings.database.connect_timeout)
        try:
            manifest = restore_snapshot(conn, src, model=model, force=force)
        finally:
            conn.close()
    except (SnapshotError, DatabaseError) as err:
        fail(str(err))
    click.echo(
        f"restored {src}: {manifest.rows('documents')} documents, {manifest.rows('chunks')} chunks, "
        f"{manifest.rows('sources')} sources"
    )
