"""The warm service's API in-process (FastAPI's TestClient, the real lifespan): a real Postgres with row-level
security, the real model, real PDFs; tokens for the operator and two tenants; URL triggers against a real
server on 127.0.0.1, other addresses through the resolver seam (never contacted)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from embedding.model import Embedder
from flows.runtime import Services
from flows.serve import Service
from flows.serve_api import create_app
from flows.settings import load_settings
from flows.trigger import pdf_request
from tests.support.db import fresh_database
from tests.support.httpserver import Reply, ScriptedServer, serve
from tests.support.pdfgen import text_pdf

TOKENS = {"T_OPERATOR": "op-7f3a9c", "T_ACME": "acme-1b2c3d", "T_GLOBEX": "globex-9e8d7c"}
OPERATOR = {"Authorization": f"Bearer {TOKENS['T_OPERATOR']}"}
ACME = {"Authorization": f"Bearer {TOKENS['T_ACME']}"}
GLOBEX = {"Authorization": f"Bearer {TOKENS['T_GLOBEX']}"}


class Resolver:
    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table

    def __call__(self, host: str, port: int) -> Sequence[str]:
        return self.table[host]


@dataclass
class Api:
    client: TestClient
    service: Service
    files: ScriptedServer
    root: Path

    def post_pdf(self, path: Path, headers: dict[str, str], **params: str) -> Any:
        return self.client.post(
            "/v1/runs",
            content=path.read_bytes(),
            params={"filename": path.name, **params},
            headers={**headers, "Content-Type": "application/pdf"},
        )

    def wait(self, run_id: str, headers: dict[str, str] = OPERATOR, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record: dict[str, Any] = self.client.get(f"/v1/runs/{run_id}", headers=headers).json()
            if record["state"] not in ("queued", "running"):
                return record
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} not finished in {timeout} s")

    def search(self, query: str, headers: dict[str, str] = OPERATOR, **body: Any) -> Any:
        return self.client.post("/v1/search", json={"query": query, **body}, headers=headers)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pg_server: str, embedder: Embedder) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    shelf = root / "shelf"
    text_pdf(shelf / "tides.pdf", ["Spring tides at the estuary mouth rise four metres above the chart datum."])
    os.environ.update(TOKENS)
    settings = load_settings(
        {
            "RAGLINE_HOME": str(root / "home"),
            "RAGLINE_DATABASE_URL": fresh_database(pg_server),
            "RAGLINE_DATABASE__ROW_LEVEL_SECURITY": "true",
            "RAGLINE_SOURCES": f'[{{"kind": "pdf", "name": "shelf", "paths": ["{shelf}"], "tenant": "globex"}}]',
            "RAGLINE_SERVE": (
                '{"token_env": "T_OPERATOR", "tenant_tokens": [{"tenant": "acme", "token_env": "T_ACME"}, '
                '{"tenant": "globex", "token_env": "T_GLOBEX"}], "url_allow": ["127.0.0.1/32"], '
                '"max_body_bytes": 2000000, "queue_size": 8}'
            ),
        }
    )
    services = Services(settings, shared_embedder=embedder)
    resolver = Resolver({"metadata.test": ["169.254.169.254"], "files.test": ["127.0.0.1"], "lan.test": ["10.9.8.7"]})
    service = Service(services, resolver=resolver)
    try:
        with serve() as files, TestClient(create_app(service)) as client:
            deadline = time.monotonic() + 300
            while client.get("/readyz", headers=OPERATOR).status_code != 200:
                assert service.failure is None, service.failure
                assert time.monotonic() < deadline, "the service did not warm up"
                time.sleep(0.1)
            yield Api(client, service, files, root)
    finally:
        services.close()
        for name in TOKENS:
            os.environ.pop(name, None)


def test_probes_schema_and_tokens(api: Api) -> None:
    c = api.client
    assert c.get("/healthz").json() == {"status": "alive"}  # no token needed to be alive
    assert c.get("/readyz").json() == {"ready": True}  # a probe needs no token, and gets no figures
    assert c.get("/readyz", headers=ACME).json() == {"ready": True}
    assert c.get("/readyz", headers=OPERATOR).json()["queue_size"] == 8
    missing = c.get("/v1/runs/0123")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert c.post("/v1/search", json={"query": "x"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    schema = c.get("/openapi.json", headers=OPERATOR).json()
    assert {"/v1/runs", "/v1/runs/{run_id}", "/v1/search", "/v1/status", "/v1/quarantine"} <= set(schema["paths"])
    search_body = schema["components"]["schemas"]["SearchBody"]["properties"]
    assert {"query", "k", "mode", "tenant", "source", "filters", "exact", "ef_search"} <= set(search_body)


def test_posted_pdf_is_searchable_and_its_file_leaves_the_inbox(api: Api, tmp_path: Path) -> None:
    pdf = text_pdf(tmp_path / "heron.pdf", ["A grey heron named Bartholomew fishes the weir at Quillmouth every dawn."])
    first = api.post_pdf(pdf, OPERATOR)
    assert first.status_code == 202, first.text
    run = first.json()
    assert first.headers["Location"] == f"/v1/runs/{run['run_id']}" and not run["duplicate"]
    again = api.post_pdf(pdf, OPERATOR, filename="renamed.pdf")
    assert again.json()["run_id"] == run["run_id"] and again.json()["duplicate"]
    done = api.wait(run["run_id"])
    assert done["state"] == "completed" and done["counts"]["committed"] == 1

    hits = api.search("heron fishing at the weir", k=1).json()["hits"]
    assert "Bartholomew" in hits[0]["text"] and hits[0]["source"] == "inbox" and hits[0]["title"] == "heron"
    assert set(hits[0]) == {"score", "similarity", "text", "source", "uri", "title", "page", "chunk_index"}
    vector = api.search("heron fishing at the weir", k=1, mode="vector", exact=True, ef_search=40).json()["hits"]
    assert vector[0]["score"] == vector[0]["similarity"]
    assert api.service.inbox.files() == []  # committed: the posted copy is gone
    assert list(api.service.inbox.journal.glob("*.json")) == []

    status = api.client.get("/v1/status", headers=OPERATOR).json()
    assert status["sources"]["inbox"]["last_run"]["status"] == "completed"
    assert api.client.get("/v1/quarantine", headers=OPERATOR).json() == []


def test_a_tenant_sees_and_ingests_only_its_own(api: Api, tmp_path: Path) -> None:
    acme = text_pdf(tmp_path / "acme.pdf", ["The Zanzibar ferry schedule lists the dhow crossings at slack water."])
    globex = text_pdf(tmp_path / "globex.pdf", ["Quokkas on Rottnest Island were counted by the night survey team."])
    acme_run = api.post_pdf(acme, ACME).json()
    globex_run = api.post_pdf(globex, GLOBEX).json()
    assert acme_run["request"]["source"] == "inbox-acme" and acme_run["request"]["tenant"] == "acme"
    assert api.wait(acme_run["run_id"], ACME)["state"] == "completed"
    assert api.wait(globex_run["run_id"], GLOBEX)["state"] == "completed"

    # acme's token, asking for globex's words: only acme's chunks can come back, whatever the query says.
    leaked = api.search("Quokkas on Rottnest Island night survey", ACME, k=20).json()["hits"]
    assert leaked and all(h["source"] == "inbox-acme" for h in leaked)
    assert all("Quokka" not in h["text"] for h in leaked)
    across = api.search("Quokkas", ACME, tenant="globex")
    assert across.status_code == 403 and "acme" in across.json()["error"]
    own = api.search("Quokkas on Rottnest Island", GLOBEX, k=1).json()["hits"]
    assert "Quokkas" in own[0]["text"]
    everyone = {h["source"] for h in api.search("ferry quokka heron", k=50).json()["hits"]}
    assert {"inbox-acme", "inbox-globex"} <= everyone  # the operator sees every tenant

    assert api.client.get(f"/v1/runs/{globex_run['run_id']}", headers=ACME).status_code == 404
    assert api.client.get("/v1/status", headers=ACME).status_code == 403
    assert api.client.get("/v1/quarantine", headers=GLOBEX).status_code == 403
    into_other = api.post_pdf(acme, ACME, source="shelf")  # a configured source of globex
    assert into_other.status_code == 403 and "another tenant" in into_other.json()["error"]
    into_inbox = api.post_pdf(acme, ACME, source="inbox-globex")  # globex's, known from the ledger
    assert into_inbox.status_code == 403
    records = api.client.post("/v1/runs", json={"source": "shelf"}, headers=ACME)
    assert records.status_code == 403
    assert api.client.post("/v1/runs", json={"source": "shelf"}, headers=GLOBEX).status_code == 202


def test_requests_are_validated_and_bounded(api: Api) -> None:
    c = api.client
    no_query = c.post("/v1/search", json={"k": 3}, headers=OPERATOR)
    assert no_query.status_code == 422 and "query: Field required" in no_query.json()["error"]
    bad_k = c.post("/v1/search", json={"query": "x", "k": 0}, headers=OPERATOR)
    assert bad_k.status_code == 422 and bad_k.json()["error"].startswith("k: ")
    unknown = c.post("/v1/search", json={"query": "x", "limit": 3}, headers=OPERATOR)
    assert unknown.status_code == 422 and "limit" in unknown.json()["error"]
    mode = c.post("/v1/search", json={"query": "x", "mode": "fuzzy"}, headers=OPERATOR)
    assert mode.status_code == 422 and "mode" in mode.json()["error"]

    too_big = c.post(
        "/v1/runs", content=b"%PDF-" + b"0" * 2_000_000, headers={**OPERATOR, "Content-Type": "application/pdf"}
    )
    assert too_big.status_code == 413 and "exceeds 2000000 bytes" in too_big.json()["error"]
    big_json = c.post("/v1/search", content=b'{"query": "' + b"a" * 1_100_000 + b'"}', headers=OPERATOR)
    assert big_json.status_code == 413
    wrong_type = c.post("/v1/runs", content=b"hello", headers={**OPERATOR, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    bad_json = c.post("/v1/runs", content=b"{", headers={**OPERATOR, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    unknown_source = c.post("/v1/runs", json={"source": "nope", "ids": ["1"]}, headers=OPERATOR)
    assert unknown_source.status_code == 422 and "no source named 'nope'" in unknown_source.json()["error"]
    assert c.get("/v1/runs/0123", headers=OPERATOR).status_code == 404


def test_url_triggers_refuse_internal_addresses(api: Api) -> None:
    pdf = text_pdf(api.root / "served.pdf", ["The lighthouse keeper logged a waterspout off Gannet Head at noon."])
    api.files.route("/doc.pdf", [Reply(200, pdf.read_bytes(), {"Content-Type": "application/pdf"})])
    api.files.route("/bounce", [Reply(302, b"", {"Location": "http://metadata.test/latest/meta-data"})])
    port = api.files.url.rsplit(":", 1)[1]

    def trigger(url: str) -> Any:
        return api.client.post("/v1/runs", json={"url": url}, headers=OPERATOR)

    for url, reason in [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://metadata.test/latest/meta-data", "169.254.169.254, which is a link-local"),
        ("http://lan.test/a.pdf", "10.9.8.7, which is a private"),
        ("http://[::1]:9/a.pdf", "loopback"),
        (f"http://127.0.0.2:{port}/doc.pdf", "loopback"),
        ("http://0.0.0.0:9/a.pdf", "unspecified"),
        ("http://[fd00::1]/a.pdf", "unique-local"),
        ("http://[::ffff:10.0.0.1]/a.pdf", "private"),
    ]:
        refused = trigger(url)
        assert refused.status_code == 403, (url, refused.text)
        assert reason in refused.json()["error"], (url, refused.json())
    assert trigger("file:///etc/passwd").status_code == 422

    fetched = trigger(f"http://files.test:{port}/doc.pdf")  # the seam maps it to 127.0.0.1, which url_allow opens
    assert fetched.status_code == 202, fetched.text
    assert api.wait(fetched.json()["run_id"])["state"] == "completed"
    hits = api.search("waterspout off Gannet Head", k=1).json()["hits"]
    assert "waterspout" in hits[0]["text"] and hits[0]["uri"] == f"http://files.test:{port}/doc.pdf"

    bounced = trigger(f"http://files.test:{port}/bounce")
    assert bounced.status_code == 202
    failed = api.wait(bounced.json()["run_id"])
    assert failed["state"] == "failed" and "169.254.169.254, which is a link-local" in failed["error"]
    assert not [c for c in api.files.calls() if c.path == "/latest/meta-data"]
    assert api.service.inbox.files() == []  # the fetched copy went once committed


def test_unavailable_until_warm_and_journaled_requests_survive_a_restart(api: Api, tmp_path: Path) -> None:
    """A second service on the same home: before warming it answers 503; a request journaled by a process that
    died before running it is run at the next start, and its file then leaves the inbox."""
    services = api.service.services
    cold = Service(services, resolver=api.service.resolver)
    client = TestClient(create_app(cold))  # no lifespan: never warmed
    refused = client.post("/v1/search", json={"query": "x"}, headers=OPERATOR)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    pdf = text_pdf(tmp_path / "left.pdf", ["The ferryman's ledger recorded eleven crossings in the fog of March."])
    assert (
        client.post(
            "/v1/runs", content=pdf.read_bytes(), headers={**OPERATOR, "Content-Type": "application/pdf"}
        ).status_code
        == 503
    )

    digest, stored = cold.inbox.store(pdf.read_bytes(), "left.pdf")  # what a crashed process left
    assert cold.inbox.admit(pdf_request(digest, "inbox", stored.name))
    cold.warm()
    try:
        deadline = time.monotonic() + 120
        while cold.inbox.files() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cold.inbox.files() == [] and list(cold.inbox.journal.glob("*.json")) == []
    finally:
        cold.drain(grace=30)
    hits = api.search("ferryman's ledger crossings in the fog", k=1).json()["hits"]
    assert "ferryman" in hits[0]["text"]


def test_metrics_count_runs_requests_and_shedding(api: Api, tmp_path: Path) -> None:
    pdf = text_pdf(tmp_path / "owl.pdf", ["A barn owl hunts the water meadows below the lock keeper's cottage."])
    run = api.post_pdf(pdf, OPERATOR).json()
    assert api.wait(run["run_id"])["state"] == "completed"
    api.search("barn owl over the water meadows", k=1)
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers=ACME).status_code == 403  # every tenant's figures: operator only
    scraped = api.client.get("/metrics", headers=OPERATOR)
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    text = scraped.text
    for line in (
        'ragline_runs_total{outcome="completed",source="inbox",tenant="default"}',
        'ragline_documents_total{event="committed",source="inbox",tenant="default"}',
        'ragline_chunks_total{how="embedded",source="inbox",tenant="default"}',
        'ragline_embedded_tokens_total{source="inbox",tenant="default"}',
        'ragline_phase_duration_seconds_bucket{le="+Inf",phase="parse",source="inbox"}',
        'ragline_phase_duration_seconds_bucket{le="+Inf",phase="commit",source="inbox"}',
        'ragline_http_requests_total{method="POST",route="/v1/search",status="200"}',
        'ragline_http_requests_total{method="GET",route="/v1/runs/{run_id}",status="200"}',
        "ragline_trigger_queue_length ",
        "ragline_searches_in_flight ",
        'ragline_run_duration_seconds_bucket{le="+Inf",source="inbox"}',
    ):
        assert line in text, line
    prefix = 'ragline_documents_total{event="committed",source="inbox",tenant="default"}'
    committed = next(row for row in text.splitlines() if row.startswith(prefix))
    assert float(committed.rsplit(" ", 1)[1]) >= 2  # heron and owl, at least
