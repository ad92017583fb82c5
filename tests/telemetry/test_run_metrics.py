"""A run's metrics and figures after a real in-process ingest (the real store, model and parser): phase
histograms per source, the tenant on the run metrics, quarantines by reason, and ``runs.figures``."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from tests.support.pdfgen import not_a_pdf, text_pdf
from vectorstore import ledger

PAGES = {
    "owls": ["Barn owls hunt the water meadows at dusk.", "Their facial discs funnel sound to their ears."],
    "tides": ["Spring tides follow new and full moons.", "Neap tides have the smallest range of the month."],
    "bread": ["A sourdough starter needs daily feeding.", "Proofing in the fridge slows fermentation."],
}
SOURCE, TENANT = "acme-docs", "acme"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    """The samples this test moves (the registry is the process's: other tests' runs count too)."""
    run = {"source": SOURCE, "tenant": TENANT}
    values = {
        "runs": sample("ragline_runs_total", **run, outcome="completed_with_quarantine"),
        "committed": sample("ragline_documents_total", **run, event="committed"),
        "quarantined": sample("ragline_documents_total", **run, event="quarantined"),
        "not_a_pdf": sample("ragline_quarantined_documents_total", **run, reason="not_a_pdf"),
        "embedded": sample("ragline_chunks_total", **run, how="embedded"),
        "tokens": sample("ragline_embedded_tokens_total", **run),
    }
    for phase in ("parse", "chunk", "embed", "commit"):
        labels = {"source": SOURCE, "phase": phase}
        values[f"{phase}_count"] = sample("ragline_phase_duration_seconds_count", **labels)
        values[f"{phase}_sum"] = sample("ragline_phase_duration_seconds_sum", **labels)
    return values


def test_an_ingest_records_phases_tenant_labels_quarantines_and_figures(tmp_path: Path, services: Services) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, pages in PAGES.items():
        text_pdf(docs / f"{name}.pdf", pages)
    not_a_pdf(docs / "notes.pdf")
    ledger.ensure_source(services.conn, SOURCE, "pdf", TENANT)  # the tenant is the source's, from the ledger
    before = snapshot()

    counts = ingest_pdf_paths(services.pipeline, [docs], source=SOURCE)

    moved = {key: value - before[key] for key, value in snapshot().items()}
    assert (counts.committed, counts.quarantined) == (3, 1)
    assert moved["runs"] == 1 and moved["committed"] == 3 and moved["quarantined"] == 1
    assert moved["not_a_pdf"] == 1
    assert moved["embedded"] == counts.chunks_written > 0 and moved["tokens"] == counts.embedded_tokens > 0
    # Parse and chunk per document that parsed; embed and commit per batch.
    assert moved["parse_count"] == moved["chunk_count"] == 3
    assert moved["embed_count"] == moved["commit_count"] >= 1
    assert all(moved[f"{phase}_sum"] > 0 for phase in ("parse", "embed", "commit"))

    row = services.conn.execute(
        "SELECT r.trace_id, r.figures FROM runs r JOIN sources s ON s.id = r.source_id"
        " WHERE s.name = %s ORDER BY r.id DESC LIMIT 1",
        (SOURCE,),
    ).fetchone()
    services.conn.commit()
    assert row is not None
    figures = row["figures"]
    assert row["trace_id"] is None and figures["trace_id"] is None  # not traced: no id pointing at nothing
    assert figures["batches"] == moved["embed_count"]
    assert set(figures["phase_seconds"]) == {"parse", "chunk", "embed", "commit"}
    for phase in ("parse", "chunk", "embed", "commit"):
        assert abs(figures["phase_seconds"][phase] - moved[f"{phase}_sum"]) < 1e-3
    assert figures["embedded_tokens"] == counts.embedded_tokens
    assert figures["tokens_per_second"] == round(counts.embedded_tokens / figures["phase_seconds"]["embed"], 1)
    sizes = figures["batch_chunks"]
    assert sum(sizes["each"]) == counts.chunks_written + counts.chunks_reused  # a first ingest: every chunk new
    assert sizes["min"] <= sizes["mean"] <= sizes["max"]
    assert (figures["chunks_embedded"], figures["chunks_reused"]) == (counts.chunks_written, counts.chunks_reused)
    assert figures["seconds"] > 0
