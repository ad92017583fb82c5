"""A model change end to end with real models: search keeps answering from the old generation while the new
one is built from stored text, then switches; a remote source's records are not fetched again."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from embedding.model import Embedder, EmbeddingSettings, resolve_model_dir
from flows.pdfs import ingest_pdf_paths
from flows.reembed import ReembedResult, migrate_generation
from flows.runtime import Services, use_services
from flows.settings import RaglineSettings
from tests.support.pdfgen import text_pdf
from vectorstore import generations

TOPICS = {
    "volcano": "Basaltic lava flows from the shield volcano cooled into columnar joints along the coast.",
    "orchard": "The apple orchard was pruned in late winter so the trees would set fruit on young wood.",
    "compiler": "The compiler lowers the syntax tree to SSA form before register allocation and scheduling.",
    "tides": "Spring tides follow the new and full moon, when the sun and moon pull along one line.",
}


@pytest.fixture
def other_model(tmp_path: Path) -> Path:
    """A second model: the same weights from another directory, so another identity (a new generation)."""
    source, _ = resolve_model_dir(EmbeddingSettings().model)
    copy = tmp_path / "minilm-copy"
    shutil.copytree(source, copy)
    return copy


def test_a_model_change_keeps_search_answering_and_ends_in_the_new_generation(
    tmp_path: Path, services: Services, settings: RaglineSettings, other_model: Path
) -> None:
    docs = tmp_path / "docs"
    for name, text in TOPICS.items():
        text_pdf(docs / f"{name}.pdf", [text, f"More about {name}: " + text])
    ingest_pdf_paths(services.pipeline, [str(docs)])
    old = generations.active(services.conn)
    assert old is not None
    before = [h.uri for h in services.search("when do spring tides happen", 3)]
    assert before[0].endswith("tides.pdf")

    new_settings = settings.model_copy(
        update={"embedding": settings.embedding.model_copy(update={"model": str(other_model)})}
    )
    new = Services(new_settings, shared_embedder=Embedder(new_settings.embedding))
    try:
        assert new.pipeline.generation.state == "building"
        answers: list[list[str]] = []

        def search_meanwhile(result: ReembedResult) -> None:
            # the new configuration's process searches too: it embeds queries with the serving (old) model
            answers.append([h.uri for h in new.search("when do spring tides happen", 3)])
            status = {g["state"]: g for g in generations.overview(new.conn)}
            assert status["active"]["name"] == old.name and "building" in status

        result = migrate_generation(new.pipeline, batch_documents=1, after_batch=search_meanwhile)
        assert result.switched and result.documents == len(TOPICS) and result.planned == len(TOPICS)
        assert answers and all(a and a[0].endswith("tides.pdf") for a in answers)

        serving = generations.active(new.conn)
        assert serving is not None and serving.name == str(other_model)
        models = new.conn.execute("SELECT DISTINCT model_id FROM chunks").fetchall()
        assert models == [{"model_id": serving.id}]  # old vectors purged
        assert [h.uri for h in new.search("when do spring tides happen", 3)] == before  # same weights, same ranking
        # the documents count as done for the new model: the next ingest embeds nothing
        again = ingest_pdf_paths(new.pipeline, [str(docs)])
        assert again.unchanged == len(TOPICS) and again.chunks_written == 0
        # and a second migrate has nothing to do
        assert not migrate_generation(new.pipeline).switched
    finally:
        new.close()


def test_the_reembed_flow_switches_and_reports_in_prefect(
    prefect_api: str, tmp_path: Path, services: Services, settings: RaglineSettings, other_model: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reembed_flow import reembed_store

    text_pdf(tmp_path / "docs" / "tides.pdf", [TOPICS["tides"]])
    ingest_pdf_paths(services.pipeline, [str(tmp_path / "docs")])
    new_settings = settings.model_copy(
        update={"embedding": settings.embedding.model_copy(update={"model": str(other_model)})}
    )
    new = Services(new_settings, shared_embedder=Embedder(new_settings.embedding))
    use_services(new)
    try:
        result = reembed_store(batch_documents=1)
        assert result["switched"] and result["documents"] == 1 and result["planned"] == 1
        active = generations.active(new.conn)
        assert active is not None and active.name == str(other_model)
        assert reembed_store()["switched"] is False  # nothing left: a scheduled run returns at once

        async def artifact_keys() -> dict[str, Any]:
            async with get_client() as client:
                only_ours = ArtifactFilter(key=ArtifactFilterKey(any_=["reembed-store", "reembed-progress"]))
                return {a.key: a for a in await client.read_artifacts(artifact_filter=only_ours) if a.key}

        import asyncio

        artifacts = asyncio.run(artifact_keys())
        assert "reembed-store" in artifacts and "switched" in str(artifacts["reembed-store"].data)
        assert artifacts["reembed-progress"].data == 100.0
    finally:
        use_services(None)
