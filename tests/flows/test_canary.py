"""The model canary against the real store and the real pool: stored on a generation's first start, matched
on the next, and after its stored vectors are replaced by rotated ones (standing for other weights under the
same name) every write into the generation is refused with a clear error, documents stay pending, and
``ragline canary accept`` lets writes resume."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from flows.canary import CheckedPool
from flows.pdfs import ingest_pdf_paths
from flows.reports import status_report
from flows.runtime import Services
from flows.settings import RaglineSettings, database_url
from tests.support.pdfgen import text_pdf
from vectorstore import baselines
from vectorstore.baselines import CanaryMismatchError

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _pdf(root: Path, name: str) -> Path:
    return text_pdf(root / name / f"{name}.pdf", [f"A short note about {name}: " + "tides and moons " * 20])


def _gauge(services: Services) -> float | None:
    identity = services.embedder.identity
    return REGISTRY.get_sample_value("ragline_canary_ok", {"model": f"{identity.name}@{identity.revision}"})


@pytest.fixture
def start(settings: RaglineSettings) -> Iterator[list[Services]]:
    """Process starts: each a ``Services`` of its own with the real embedding pool (no shared model)."""
    started: list[Services] = []
    yield started
    for svc in started:
        svc.close()


def _started(starts: list[Services], settings: RaglineSettings) -> Services:
    svc = Services(settings)
    starts.append(svc)
    assert isinstance(svc.embedder, CheckedPool)
    return svc


def _committed(svc: Services, name: str) -> bool:
    row = svc.conn.execute("SELECT status FROM documents WHERE external_id LIKE %s", (f"%{name}.pdf",)).fetchone()
    svc.conn.commit()
    return row is not None and row["status"] == "committed"


def test_a_mismatch_stops_writes_until_accepted(
    tmp_path: Path, settings: RaglineSettings, start: list[Services], caplog: pytest.LogCaptureFixture
) -> None:
    first = _started(start, settings)
    assert ingest_pdf_paths(first.pipeline, [_pdf(tmp_path, "one")], "notes").committed == 1
    model_id = first.pipeline.model_id()
    stored = baselines.stored_canary(first.conn, model_id)
    assert stored is not None and stored.status == "ok" and stored.vectors.shape == (16, 384)
    assert _gauge(first) == 1

    second = _started(start, settings)  # the next start of the same model: it matches
    assert ingest_pdf_paths(second.pipeline, [_pdf(tmp_path, "two")], "notes").committed == 1
    [state] = status_report(second.conn, settings)["canary"]
    assert state["status"] == "ok" and state["min_cosine"] > 0.999 and not state["writes_stopped"]

    # Other weights under the same name: the stored vectors no longer match what this model makes.
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(384, 384)))[0]
    with second.conn.transaction():
        second.conn.execute(
            "UPDATE model_canaries SET vectors = %s WHERE model_id = %s",
            ((stored.vectors @ rotation).tolist(), model_id),
        )

    third = _started(start, settings)
    with caplog.at_level(logging.ERROR, logger="flows.canary"), pytest.raises(CanaryMismatchError) as refused:
        ingest_pdf_paths(third.pipeline, [_pdf(tmp_path, "three")], "notes")
    message = str(refused.value)
    assert f"writes into model generation {model_id} ({MODEL}" in message
    assert "embeds at cosine" in message and "ragline canary accept" in message and "stay pending" in message
    assert any("canary" in r.getMessage() and "MISMATCH" in r.getMessage() for r in caplog.records)
    assert not _committed(third, "three")
    report = status_report(third.conn, settings)
    assert report["quarantined"] == 0 and report["canary"][0]["writes_stopped"]
    assert _gauge(third) == 0

    # The CLI says so in one line, exit 1, and accepting lets writes resume.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env.update(RAGLINE_HOME=str(settings.home), RAGLINE_DATABASE_URL=database_url(settings), HF_HUB_OFFLINE="1")

    def ragline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ragline", *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )

    checked = ragline("canary", "check")
    assert checked.returncode == 1 and "MISMATCH" in checked.stdout and "STOPPED" in checked.stdout
    accepted = ragline("canary", "accept")
    assert accepted.returncode == 0, accepted.stderr
    assert "canary vectors accepted, writes resume" in accepted.stdout and "MISMATCH" in accepted.stdout

    counts = ingest_pdf_paths(third.pipeline, [_pdf(tmp_path, "three")], "notes")
    assert counts.committed == 1 and _committed(third, "three")
    assert status_report(third.conn, settings)["canary"][0]["status"] == "ok"


def test_a_match_does_not_lift_a_recorded_mismatch(
    tmp_path: Path, settings: RaglineSettings, start: list[Services]
) -> None:
    """A mismatch some process recorded stays until an operator resolves it: a later start whose model matches
    the reference does not clear it (the process that differs may still be running elsewhere)."""
    first = _started(start, settings)
    ingest_pdf_paths(first.pipeline, [_pdf(tmp_path, "one")], "notes")
    model_id = first.pipeline.model_id()
    with first.conn.transaction():
        first.conn.execute(
            "UPDATE model_canaries SET status = 'mismatch', min_cosine = 0.42, worst_text = 'q' WHERE model_id = %s",
            (model_id,),
        )
    second = _started(start, settings)
    with pytest.raises(CanaryMismatchError, match=r"at cosine 0\.4200"):
        ingest_pdf_paths(second.pipeline, [_pdf(tmp_path, "two")], "notes")
    assert _gauge(second) == 0


def test_the_canary_can_be_turned_off(settings: RaglineSettings) -> None:
    off = settings.model_copy(update={"drift": settings.drift.model_copy(update={"canary": False})})
    svc = Services(off)
    try:
        assert not isinstance(svc.embedder, CheckedPool)
    finally:
        svc.close()
