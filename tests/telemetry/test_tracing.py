"""Traces of runs as an operator receives them: the real CLI in a subprocess exporting over OTLP/HTTP to a real
collector on 127.0.0.1 (the exporter's environment handling and the flush before exit included), real PDFs, a
hostile one among them; and, without the variable, no provider, no exporter thread, no trace id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from telemetry.tracing import safe_url
from tests.support.hostile_pdfs import cyclic_page_tree
from tests.support.otlp import Collector, Span, collector
from tests.support.pdfgen import text_pdf
from tests.support.prefect import PrefectServer
from vectorstore.embedded import stop_embedded

PAGES = {
    "owls": ["Barn owls hunt the water meadows at dusk.", "Their facial discs funnel sound to their ears."],
    "tides": ["Spring tides follow new and full moons.", "Neap tides have the smallest range of the month."],
}
HEADER_SECRET = "otlp-header-s3cret"


@pytest.mark.parametrize(
    ("uri", "safe"),
    [
        ("/srv/docs/a.pdf", "/srv/docs/a.pdf"),
        ("https://wiki.example.org/wiki/Owl?oldid=5", "https://wiki.example.org/wiki/Owl?oldid=5"),
        ("https://bob:hunter2@kb.example.org/page/7", "https://kb.example.org/page/7"),
        (
            "https://x.example.org:8443/f?access_token=abc&page=2",
            "https://x.example.org:8443/f?access_token=REDACTED&page=2",
        ),
        (
            "https://x.example.org/f?X-Amz-Signature=abc&API_KEY=k",
            "https://x.example.org/f?X-Amz-Signature=REDACTED&API_KEY=REDACTED",
        ),
        ("http://[::1]:9000/doc", "http://[::1]:9000/doc"),
    ],
)
def test_safe_url_drops_credentials(uri: str, safe: str) -> None:
    assert safe_url(uri) == safe


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )


NO_EXPORT = """
import sys, threading
from opentelemetry import trace
from telemetry import tracing
assert tracing.setup() is False and tracing.setup() is False
assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
span = tracing.tracer().start_span("ragline.run")
assert not span.is_recording() and tracing.trace_id(span) is None
span.end()
tracing.flush()
assert not [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]
assert "opentelemetry.sdk.trace" not in sys.modules and "opentelemetry.exporter.otlp.proto.http" not in sys.modules
print("ok")
"""


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"},
    ],
    ids=["no-endpoint", "sdk-disabled", "exporter-none"],
)
def test_without_an_endpoint_nothing_is_installed_and_no_thread_starts(env: dict[str, str]) -> None:
    assert _python(NO_EXPORT, **env).stdout.strip() == "ok"


EXPORT = """
import threading
from telemetry import tracing
assert tracing.setup() is True and tracing.setup() is True
with tracing.tracer().start_as_current_span("ragline.run") as span:
    print(tracing.trace_id(span))
tracing.flush()
print(sum(t.name.startswith("OtelBatch") for t in threading.enumerate()))
"""


def test_traces_endpoint_alone_exports_with_the_operators_resource() -> None:
    with collector() as received:
        out = _python(
            EXPORT,
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=received.url + "/v1/traces",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        )
        trace_id, threads = out.stdout.split()
        [span] = received.spans("ragline.run")
    assert threads == "1" and span.trace_id == trace_id
    assert span.resource["service.name"] == "ragline"
    assert span.resource["service.instance.id"] == socket.gethostname()
    assert span.resource["deployment.environment"] == "test"


@pytest.fixture
def home(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A RAGLINE_HOME whose Prefect server is the session's; its embedded Postgres is stopped after."""
    path = prefect_server.ragline_home(tmp_path_factory.mktemp("traced") / "home")
    yield path
    stop_embedded(path)


def _ragline(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "ragline", *args],
        env={**clean, "RAGLINE_HOME": str(home), "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _flow_run_logs(prefect_server: PrefectServer, flow_run_id: str) -> list[str]:
    """The flow run's log lines as the Prefect UI shows them (shipped by the CLI's log handler as it exits)."""
    query = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}}
    deadline = time.monotonic() + 60
    while True:
        lines = [e["message"] for e in httpx.post(f"{prefect_server.api_url}/logs/filter", json=query).json()]
        if any("trace id" in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def _children(spans: list[Span], parent: Span, name: str) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and s.name == name]


@pytest.mark.slow
def test_cli_ingest_exports_the_run_its_documents_and_their_steps(
    tmp_path: Path, home: Path, empty_database_url: str, prefect_server: PrefectServer
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    good = {name: text_pdf(docs / f"{name}.pdf", pages) for name, pages in PAGES.items()}
    hostile = cyclic_page_tree(docs / "cyclic-page-tree.pdf")
    with collector() as received:
        proc = _ragline(
            home,
            "-v",
            "ingest",
            "pdf",
            str(docs),
            RAGLINE_DATABASE_URL=empty_database_url,
            OTEL_EXPORTER_OTLP_ENDPOINT=received.endpoint,
            OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {HEADER_SECRET}",
        )
        spans = received.spans()  # the process has exited: what it flushed is all there is
    assert "2 ingested" in proc.stdout and "1 quarantined" in proc.stdout

    [run] = [s for s in spans if s.name == "ragline.run"]
    assert run.resource["service.name"] == "ragline"
    assert run.attributes["ragline.source"] == "pdf" and run.attributes["ragline.tenant"] == "default"
    assert run.attributes["ragline.run.outcome"] == "completed_with_quarantine"
    assert run.attributes["prefect.flow_run.id"]
    assert {s.trace_id for s in spans if s.name.startswith("ragline.")} == {run.trace_id}

    documents = {s.attributes["ragline.document.external_id"]: s for s in _children(spans, run, "ragline.document")}
    assert set(documents) == {str(p) for p in [*good.values(), hostile]}
    for path in good.values():
        doc = documents[str(path)]
        assert doc.attributes["ragline.document.outcome"] == "committed" and doc.status_code != 2
        assert doc.attributes["url.full"] == str(path) and doc.attributes["ragline.document.chunks"] >= 1
        assert doc.attributes["ragline.document.tokens"] >= 1
        [parse] = _children(spans, doc, "ragline.parse")
        [chunk] = _children(spans, doc, "ragline.chunk")
        assert parse.start_ns <= parse.end_ns == chunk.start_ns <= chunk.end_ns <= doc.end_ns
        # Parsed in the run, or ahead of the flow while the CLI waited for Prefect (before the claim).
        ahead = parse.attributes["ragline.parse.ahead"]
        assert ahead == chunk.attributes["ragline.parse.ahead"]
        assert (parse.start_ns < doc.start_ns) if ahead else (doc.start_ns <= parse.start_ns)
    broken = documents[str(hostile)]
    assert broken.status_code == 2 and broken.attributes["ragline.document.outcome"] == "quarantined"
    [(_, attributes)] = [e for e in broken.events if e[0] == "ragline.quarantined"]
    assert attributes["ragline.quarantine.reason"] == "corrupt"

    # Embedding and committing work on batches across documents: spans of the run, linked to the documents.
    for name in ("ragline.embed", "ragline.commit"):
        batches = _children(spans, run, name)
        assert batches, name
        linked = {link for batch in batches for link in batch.links}
        assert linked == {documents[str(p)].span_id for p in good.values()}
        for path in good.values():
            assert set(documents[str(path)].links) & {b.span_id for b in batches}
    assert sum(b.attributes["ragline.batch.tokens"] for b in _children(spans, run, "ragline.embed")) > 0

    with psycopg.connect(empty_database_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT id, trace_id, figures FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        reason = conn.execute("SELECT error_reason FROM documents WHERE external_id = %s", (str(hostile),)).fetchone()
    assert row is not None and reason is not None and reason["error_reason"] == "corrupt"
    assert row["trace_id"] == run.trace_id == row["figures"]["trace_id"]
    assert run.attributes["ragline.run.id"] == row["id"]
    assert f"trace {run.trace_id}" in proc.stderr  # the CLI's log (-v)
    assert any(run.trace_id in line for line in _flow_run_logs(prefect_server, run.attributes["prefect.flow_run.id"]))

    # No credentials anywhere: not the collector's header, not the database's URL or password.
    password = conninfo_to_dict(empty_database_url).get("password")
    secrets = [HEADER_SECRET, empty_database_url, *([str(password)] if password else [])]
    values = [str(v) for s in spans for v in [*s.attributes.values(), *s.resource.values()]]
    values += [str(v) for s in spans for _, attrs in s.events for v in attrs.values()]
    assert not [v for v in values for secret in secrets if secret in v]


@pytest.mark.slow
def test_cli_ingest_without_the_variable_records_no_trace_id_but_its_figures(
    tmp_path: Path, home: Path, empty_database_url: str
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    text_pdf(docs / "owls.pdf", PAGES["owls"])
    _ragline(home, "ingest", "pdf", str(docs), RAGLINE_DATABASE_URL=empty_database_url)
    with psycopg.connect(empty_database_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT trace_id, figures FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    assert row is not None and row["trace_id"] is None and row["figures"]["trace_id"] is None
    assert row["figures"]["batches"] >= 1


def test_collector_decodes_what_the_sdk_sends(tmp_path: Path) -> None:
    """The collector itself, against the SDK's exporter in this process (not the global provider)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    with collector() as received:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=received.url + "/v1/traces")))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("parent") as parent, tracer.start_as_current_span("child") as child:
            child.add_event("e", {"k": 1})
        provider.shutdown()
        by_name = {s.name: s for s in received.spans()}
    assert by_name["child"].parent_id == format(parent.get_span_context().span_id, "016x")
    assert by_name["child"].events == [("e", {"k": 1})]
    assert isinstance(received, Collector)
