"""Fixtures of the snapshot tests: the origin store (real PDFs ingested through the pipeline, with the real
model) and its snapshot, built once for the package; a fresh database to restore into."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedding.model import Embedder
from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import load_settings
from tests.support.db import fresh_database
from tests.vectorstore.snapshot.support import Origin, make_corpus
from vectorstore import cursors, ledger
from vectorstore.db import Connection, connect
from vectorstore.snapshot import create_snapshot


@pytest.fixture(scope="package")
def origin(pg_server: str, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """A store with committed, quarantined and deleted documents, two sources with cursors, and its snapshot."""
    home = tmp_path_factory.mktemp("origin")
    url = fresh_database(pg_server)
    svc = Services(load_settings({"RAGLINE_HOME": str(home), "RAGLINE_DATABASE_URL": url}), shared_embedder=embedder)
    files = make_corpus(home / "docs")
    ingest_pdf_paths(svc.pipeline, [str(home / "docs")])
    files[-1].unlink()
    ingest_pdf_paths(svc.pipeline, [str(home / "docs")])  # the removed file's document is marked deleted
    wiki = ledger.ensure_source(svc.conn, "wiki", "mediawiki")
    cursors.save_cursor(svc.conn, wiki, {"continue": "-||", "since": "2024-05-01T00:00:00Z", "page": 42})
    cursors.save_cursor(svc.conn, ledger.ensure_source(svc.conn, "pdf", "pdf"), {"seen": ["a", "b"]})
    manifest = create_snapshot(svc.conn, str(home / "snap"), batch_rows=50)
    yield Origin(url, svc, home / "snap", manifest)
    svc.close()


@pytest.fixture
def target(pg_server: str) -> Iterator[Connection]:
    conn = connect(fresh_database(pg_server))
    yield conn
    conn.close()
