"""A database that goes away under a run: connections killed (``pg_terminate_backend``), the real embedded
Postgres restarted, a server that does not come back within the bound, a full disk. Every document is
committed exactly once, with the chunk ids of a clean run; what cannot be done fails with one clear line and
the next run finishes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import psycopg
import pytest

from flows.counts import Counts
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import RaglineSettings, database_url, load_settings
from tests.support.db import fresh_database
from tests.support.embedders import CountingEmbedder
from tests.support.pdfgen import text_pdf
from vectorstore.db import DatabaseError
from vectorstore.embedded import embedded_url, stop_embedded

TOPICS = [
    "Lighthouse keepers trimmed wicks and wound clockwork that turned the beam across dark water.",
    "A sourdough starter needs flour and water every day, and a warm kitchen for a lively rise.",
    "Spring tides follow new and full moons; neap tides have the smallest range between them.",
    "Basaltic lava cools into hexagonal columns where a thick flow meets the sea and shrinks.",
    "Glaciers carve U-shaped valleys and leave moraines of rock where their snouts once stood.",
    "Bees dance to tell the hive the direction and distance of flowers they have found today.",
]


def corpus(root: Path, documents: int = 12) -> list[Path]:
    """Documents of several pages each, so a run spans several group commits."""
    root.mkdir(parents=True, exist_ok=True)
    return [
        text_pdf(root / f"doc{i:02d}.pdf", [f"Part {i}, page {p}. " + TOPICS[(i + p) % len(TOPICS)] for p in range(4)])
        for i in range(documents)
    ]


class FaultOnEmbed(CountingEmbedder):
    """The real embedder, running ``fault`` once, just after its ``at``-th call returns its vectors: the
    database goes away between embedding a batch and committing it (a seam in time, not a fake)."""

    def __init__(self, inner: CountingEmbedder, at: int, fault: Callable[[], None]) -> None:
        super().__init__(inner)
        self.at = at
        self.fault: Callable[[], None] | None = fault

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        vectors = super().embed(texts, token_counts=token_counts)
        if len(self.calls) == self.at and self.fault is not None:
            fault, self.fault = self.fault, None
            fault()
        return vectors


def chunks_by_document(url: str) -> dict[str, list[str]]:
    """Each document's chunk ids, in chunk order (the lineage a clean run would write)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT d.external_id, c.id FROM chunks c JOIN documents d ON d.id = c.document_id "
            "ORDER BY d.external_id, c.chunk_index"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for external_id, chunk in rows:
        out.setdefault(external_id, []).append(str(chunk))
    return out


def committed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM documents WHERE status = 'committed'").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def clean_run(
    tmp_path: Path, pg_server: str, counting_embedder: CountingEmbedder
) -> Callable[[Path], dict[str, list[str]]]:
    """Chunk ids of an undisturbed run over a folder, in a database of its own."""

    def run(folder: Path) -> dict[str, list[str]]:
        url = fresh_database(pg_server)
        settings = load_settings({"RAGLINE_HOME": str(tmp_path / "clean"), "RAGLINE_DATABASE_URL": url})
        settings.batch_chunks = 8
        svc = Services(settings, shared_embedder=counting_embedder)
        try:
            assert ingest_pdf_paths(svc.pipeline, [folder]).committed == len(list(folder.glob("*.pdf")))
        finally:
            svc.close()
        return chunks_by_document(url)

    return run


def ingest_through_a_fault(
    settings: RaglineSettings, inner: CountingEmbedder, fault: Callable[[], None], folder: Path
) -> Counts:
    """One PDF run with ``fault`` striking between its second embedding and that batch's commit, on the
    background writers (several group commits: ``batch_chunks`` 8)."""
    settings.batch_chunks = 8
    embedder = FaultOnEmbed(inner, at=2, fault=fault)
    svc = Services(settings, shared_embedder=embedder)
    try:
        counts = ingest_pdf_paths(svc.pipeline, [folder])
    finally:
        svc.close()
    assert embedder.fault is None  # the fault did strike mid-run
    return counts


def terminate_all(url: str) -> None:
    """Kill every other connection to the database, as an operator or a failover would."""
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()) k"
        ).fetchone()
    assert killed is not None and killed[0] >= 1


def test_connections_killed_mid_run_reconnect_and_commit_everything_once(
    tmp_path: Path,
    settings: RaglineSettings,
    counting_embedder: CountingEmbedder,
    clean_run: Callable[[Path], dict[str, list[str]]],
) -> None:
    files = corpus(tmp_path / "docs")
    url = database_url(settings)
    counts = ingest_through_a_fault(settings, counting_embedder, lambda: terminate_all(url), tmp_path / "docs")
    assert (counts.committed, counts.quarantined) == (len(files), 0)
    assert chunks_by_document(url) == clean_run(tmp_path / "docs")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Path]:
    """A RAGLINE_HOME with an embedded Postgres of its own (this test restarts it)."""
    home = tmp_path / "home"
    embedded_url(home)
    yield home
    stop_embedded(home)


def restart(home: Path) -> None:
    """A fast shutdown of the embedded server; ragline starts it again when it reconnects."""
    pid = int((home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    assert stop_embedded(home)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.slow  # a server of its own, restarted (~20 s)
def test_a_postgres_restart_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path,
    own_server: Path,
    counting_embedder: CountingEmbedder,
    clean_run: Callable[[Path], dict[str, list[str]]],
) -> None:
    files = corpus(tmp_path / "docs")
    settings = load_settings({"RAGLINE_HOME": str(own_server)})
    counts = ingest_through_a_fault(settings, counting_embedder, lambda: restart(own_server), tmp_path / "docs")
    assert (counts.committed, counts.quarantined) == (len(files), 0)
    assert chunks_by_document(embedded_url(own_server)) == clean_run(tmp_path / "docs")


@pytest.mark.slow  # a server of its own, stopped then started (~25 s)
def test_a_server_that_stays_down_fails_the_run_in_one_line_and_the_next_run_finishes(
    tmp_path: Path, own_server: Path, counting_embedder: CountingEmbedder
) -> None:
    files = corpus(tmp_path / "docs")
    url = embedded_url(own_server)
    # A configured URL: nobody starts that server again, so the reconnect runs out of its bound.
    env = {"RAGLINE_HOME": str(tmp_path / "state"), "RAGLINE_DATABASE_URL": url}
    settings = load_settings({**env, "RAGLINE_DATABASE__RECONNECT_SECONDS": "2"})
    with pytest.raises(DatabaseError, match=r"could not reconnect within 2 s \(database\.reconnect_seconds\)"):
        ingest_through_a_fault(settings, counting_embedder, lambda: restart(own_server), tmp_path / "docs")

    assert embedded_url(own_server) == url  # back up
    svc = Services(load_settings(env), shared_embedder=counting_embedder)
    try:
        again = ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
    finally:
        svc.close()
    assert committed(url) == len(files) and again.committed + again.unchanged == len(files)


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 256 KiB tmpfs the database user may write: a tablespace there fills up after a few documents. Mounted
    under /tmp itself (the server's user must reach it; test folders are private to root)."""
    mount = Path(tempfile.mkdtemp(prefix="ragline-tiny-", dir="/tmp"))
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        shutil.chown(mount, "pgserver", "pgserver")
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()


def test_a_full_disk_fails_in_one_line_commits_nothing_half_and_the_next_run_finishes(
    tmp_path: Path, settings: RaglineSettings, counting_embedder: CountingEmbedder, tiny_disk: Path
) -> None:
    corpus(tmp_path / "docs", documents=40)
    url = database_url(settings)
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        _ = svc.conn  # migrated, then the chunks move onto the tiny disk
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"CREATE TABLESPACE tiny_{os.getpid()} LOCATION '{tiny_disk}'")
            admin.execute(f"ALTER TABLE chunks SET TABLESPACE tiny_{os.getpid()}")
        with pytest.raises(psycopg.errors.DiskFull, match="No space left on device"):
            ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
    finally:
        svc.close()
    with psycopg.connect(url, autocommit=True) as admin:
        # Nothing half-committed: every committed document has all its chunks.
        half = admin.execute(
            "SELECT count(*) FROM documents d WHERE status = 'committed' "
            "AND chunk_count <> (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
        ).fetchone()
        assert half == (0,)
        admin.execute("ALTER TABLE chunks SET TABLESPACE pg_default")  # space freed
        admin.execute(f"DROP TABLESPACE tiny_{os.getpid()}")
    svc = Services(settings, shared_embedder=counting_embedder)
    try:
        ingest_pdf_paths(svc.pipeline, [tmp_path / "docs"])
    finally:
        svc.close()
    assert committed(url) == 40
