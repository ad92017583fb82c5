"""The ``snapshot-store`` flow on the session's real Prefect server: snapshot, verify, retention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services, use_services
from tests.support.pdfgen import text_pdf
from vectorstore.snapshot import MANIFEST, parse_snapshot_name, verify_snapshot


@pytest.fixture
def installed(services: Services, tmp_path: Path) -> Iterator[Services]:
    text_pdf(tmp_path / "docs" / "a.pdf", ["Glaciers carve U-shaped valleys.", "Moraines mark old ice."], title="Ice")
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    use_services(services)
    yield services
    use_services(None)


def test_flow_snapshots_verifies_and_prunes(prefect_api: str, installed: Services, tmp_path: Path) -> None:
    from flows.snapshot import snapshot_store

    root = tmp_path / "snapshots"
    for name in ("20200101T000000Z", "20200102T000000Z"):
        (root / name).mkdir(parents=True)
        (root / name / MANIFEST).write_text("{}")
    (root / "20200103T000000Z").mkdir()  # an attempt that never finished
    (root / "notes").mkdir()  # not ragline's: left alone

    result = snapshot_store(str(root), keep_last=2)

    new = Path(result["snapshot"])
    assert new.parent == root and parse_snapshot_name(new.name) is not None
    assert verify_snapshot(str(new)).rows("documents") == 1
    assert result["rows"]["chunks"] >= 2
    assert result["deleted"] == ["20200101T000000Z", "20200103T000000Z"]
    assert sorted(p.name for p in root.iterdir()) == ["20200102T000000Z", new.name, "notes"]


def test_bad_retention_fails_before_any_export(prefect_api: str, installed: Services, tmp_path: Path) -> None:
    from flows.snapshot import snapshot_store

    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        snapshot_store(str(tmp_path / "snapshots"), keep_last=0)
    assert not (tmp_path / "snapshots").exists()
