"""Pushing a run's metrics to a real Pushgateway (Debian's prometheus-pushgateway on 127.0.0.1): what the gateway
holds after pushes from several short processes (running totals, not the last process's count), one group per
source, gauges as they were; and a gateway that is down or refuses: a warning that names it without its
credentials, and a run that completes all the same."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from flows.pdfs import ingest_pdf_paths
from flows.runtime import Services
from flows.settings import RaglineSettings, load_settings
from telemetry import push
from telemetry.push import Pusher, redact
from tests.support import prometheus
from tests.support.pdfgen import text_pdf
from tests.support.realwiki import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prometheus.pushgateway(tmp_path_factory.mktemp("pushgateway")) as url:
        yield url


class Process:
    """The metrics of one short ragline process: its own registry, counters from zero."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.documents = Counter("ragline_documents", "d", ["source", "event"], registry=self.registry)
        self.seconds = Histogram(
            "ragline_run_duration_seconds", "s", ["source"], buckets=(1, 10), registry=self.registry
        )
        self.breaker = Gauge("ragline_source_breaker_open", "b", ["source"], registry=self.registry)
        self.shrinks = Counter("ragline_embedding_oom_shrinks", "o", ["device"], registry=self.registry)
        self.queue = Gauge("ragline_embedding_queue_depth", "q", ["lane"], registry=self.registry)
        Counter("other_requests", "not ragline's", registry=self.registry).inc()
        self.pusher = Pusher(self.registry)


def held(gateway: str, instance: str) -> dict[str, float]:
    """The gateway's samples of job ragline and ``instance``, as 'name{labels}' (job and instance left out)."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{gateway}/metrics", timeout=10).text):
        for s in family.samples:
            labels = dict(s.labels)
            if labels.pop("job", None) == "ragline" and labels.pop("instance", None) == instance:
                if s.name in ("push_time_seconds", "push_failure_time_seconds"):
                    continue
                out[s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"] = s.value
    return out


def test_pushes_from_short_processes_add_up_per_source(gateway: str) -> None:
    instance = f"host-{uuid.uuid4().hex[:8]}"
    first = Process()
    first.documents.labels("wiki", "committed").inc(5)
    first.documents.labels("wiki", "quarantined").inc(1)
    first.documents.labels("crm", "committed").inc(2)  # another source of the same process: its own group
    first.seconds.labels("wiki").observe(4)
    first.breaker.labels("wiki").set(1)
    first.shrinks.labels("cuda:0").inc(2)
    first.queue.labels("batch").set(3)
    assert first.pusher.push(gateway, "wiki", instance=instance)
    assert held(gateway, instance) == {
        "ragline_documents_total{event=committed,source=wiki}": 5,
        "ragline_documents_total{event=quarantined,source=wiki}": 1,
        "ragline_run_duration_seconds_bucket{le=1,source=wiki}": 0,
        "ragline_run_duration_seconds_bucket{le=10,source=wiki}": 1,
        "ragline_run_duration_seconds_bucket{le=+Inf,source=wiki}": 1,
        "ragline_run_duration_seconds_count{source=wiki}": 1,
        "ragline_run_duration_seconds_sum{source=wiki}": 4,
        "ragline_source_breaker_open{source=wiki}": 1,
        "ragline_embedding_oom_shrinks_total{device=cuda:0,source=wiki}": 2,
        "ragline_embedding_queue_depth{lane=batch,source=wiki}": 3,
    }
    assert first.pusher.push(gateway, "crm", instance=instance)
    crm = {k: v for k, v in held(gateway, instance).items() if "source=crm" in k}
    # The shrinks were already delivered with wiki's run: crm's group adds none (a sum over sources stays 2).
    assert crm == {
        "ragline_documents_total{event=committed,source=crm}": 2,
        "ragline_embedding_oom_shrinks_total{device=cuda:0,source=crm}": 0,
        "ragline_embedding_queue_depth{lane=batch,source=crm}": 3,
    }

    # The next process counts from zero: 7 more committed, no quarantine, a slower run, the breaker closed.
    second = Process()
    second.documents.labels("wiki", "committed").inc(7)
    second.seconds.labels("wiki").observe(30)
    second.breaker.labels("wiki").set(0)
    assert second.pusher.push(gateway, "wiki", instance=instance)
    wiki = {k: v for k, v in held(gateway, instance).items() if "source=wiki" in k}
    assert wiki == {
        "ragline_documents_total{event=committed,source=wiki}": 12,
        "ragline_documents_total{event=quarantined,source=wiki}": 1,  # kept: a total, not the last run's
        "ragline_run_duration_seconds_bucket{le=1,source=wiki}": 0,
        "ragline_run_duration_seconds_bucket{le=10,source=wiki}": 1,
        "ragline_run_duration_seconds_bucket{le=+Inf,source=wiki}": 2,
        "ragline_run_duration_seconds_count{source=wiki}": 2,
        "ragline_run_duration_seconds_sum{source=wiki}": 34,
        "ragline_source_breaker_open{source=wiki}": 0,
        "ragline_embedding_oom_shrinks_total{device=cuda:0,source=wiki}": 2,
    }

    # The same process pushing again after another run adds only what happened since its last push.
    second.documents.labels("wiki", "committed").inc(1)
    assert second.pusher.push(gateway, "wiki", instance=instance)
    assert held(gateway, instance)["ragline_documents_total{event=committed,source=wiki}"] == 13
    assert not any(k.startswith(("other_", "python_", "process_")) for k in held(gateway, instance))


def test_a_gateway_that_is_down_or_refuses_is_a_warning_without_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    process = Process()
    process.documents.labels("wiki", "committed").inc(3)
    dead = f"http://ops:hunter2@127.0.0.1:{free_port()}/gw"
    caplog.set_level(logging.WARNING, logger="telemetry.push")
    assert not process.pusher.push(dead, "wiki", instance="h", timeout=2)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"could not push the metrics of source wiki to the Pushgateway {redact(dead)}: ")
    assert "hunter2" not in line and "ops" not in line and "127.0.0.1" in line

    # The gateway refuses a push inconsistent with what it holds (the metric as a gauge elsewhere): its
    # reason is in the warning, and the increments it did not take go with the next push that succeeds.
    process.seconds.labels("wiki").observe(2)
    with prometheus.pushgateway(tmp_path / "gateway") as gateway:  # its own: it must not know the metric yet
        clash = "# TYPE ragline_run_duration_seconds gauge\nragline_run_duration_seconds 1\n"
        answer = httpx.put(f"{gateway}/metrics/job/clash", content=clash)
        assert answer.status_code == 200, answer.text
        caplog.clear()
        assert not process.pusher.push(gateway, "wiki", instance="h")
        assert "400 Bad Request: pushed metrics are invalid or inconsistent" in caplog.records[0].getMessage()
        assert httpx.delete(f"{gateway}/metrics/job/clash").status_code == 202
        assert process.pusher.push(gateway, "wiki", instance="h")
        assert held(gateway, "h")["ragline_documents_total{event=committed,source=wiki}"] == 3


def test_credentials_in_the_url_go_in_a_basic_header(gateway: str) -> None:
    process = Process()
    process.documents.labels("wiki", "committed").inc(1)
    instance = f"host-{uuid.uuid4().hex[:8]}"
    with_user = gateway.replace("http://", "http://ops:p%40ss@")
    assert push.Gateway.parse(with_user).authorization == "Basic b3BzOnBAc3M="  # ops:p@ss
    assert process.pusher.push(with_user, "wiki", instance=instance)
    assert held(gateway, instance)["ragline_documents_total{event=committed,source=wiki}"] == 1


# -- a real run through the pipeline ------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> RaglineSettings:
    gateway_url: str = request.getfixturevalue("gateway_url")
    return load_settings(
        {
            "RAGLINE_HOME": str(tmp_path / "home"),
            "RAGLINE_DATABASE_URL": database_url,
            "RAGLINE_METRICS__PUSHGATEWAY": gateway_url,
            "RAGLINE_METRICS__INSTANCE": "test-host",
        }
    )


@pytest.fixture
def gateway_url(gateway: str, request: pytest.FixtureRequest) -> str:
    """The live gateway; parametrized "dead": a port nothing listens on, with credentials in the URL."""
    if getattr(request, "param", "live") == "dead":
        return f"http://ops:hunter2@127.0.0.1:{free_port()}"
    return gateway


def test_a_run_pushes_its_source_group(gateway_url: str, services: Services, tmp_path: Path) -> None:
    source = f"pushed-{uuid.uuid4().hex[:8]}"
    text_pdf(tmp_path / "docs" / "kelp.pdf", ["Kelp forests grow half a metre a day in cold upwelling water."])
    counts = ingest_pdf_paths(services.pipeline, [tmp_path / "docs"], source)
    assert counts.committed == 1
    got = {k: v for k, v in held(gateway_url, "test-host").items() if f"source={source}" in k}
    assert got[f"ragline_documents_total{{event=committed,source={source},tenant=default}}"] == 1
    assert got[f"ragline_runs_total{{outcome=completed,source={source},tenant=default}}"] == 1


@pytest.mark.parametrize("gateway_url", ["dead"], indirect=True)
def test_a_run_with_the_gateway_down_completes_and_warns(
    gateway_url: str, services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text_pdf(tmp_path / "docs" / "reef.pdf", ["Parrotfish grind coral into the white sand of the reef flat."])
    caplog.set_level(logging.WARNING, logger="telemetry.push")
    counts = ingest_pdf_paths(services.pipeline, [tmp_path / "docs"], "reef")
    assert counts.committed == 1
    status = services.pipeline.conn.execute(
        "SELECT r.status FROM runs r JOIN sources s ON s.id = r.source_id WHERE s.name = 'reef'"
    ).fetchall()
    assert status == [{"status": "completed"}]
    warnings = [r.getMessage() for r in caplog.records if r.name == "telemetry.push"]
    assert len(warnings) == 1 and "Pushgateway http://127.0.0.1:" in warnings[0] and "hunter2" not in warnings[0]


def test_serve_never_pushes(gateway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pushed: list[str] = []
    monkeypatch.setattr(push, "default_pusher", lambda: pushed.append("pushed"))
    monkeypatch.setattr(push, "_scraped", False)
    settings = load_settings({"RAGLINE_HOME": "/nonexistent", "RAGLINE_METRICS__PUSHGATEWAY": gateway})
    push.scraped()
    push.after_run(settings, "wiki")
    assert pushed == []


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("pushgateway:9091", "must be an http:// or https:// URL with a host"),
        ("ftp://pushgateway:9091", "must be an http:// or https:// URL with a host"),
        ("http://pushgateway:99999", "not a URL (Port out of range"),
        ("http://pushgateway:9091/?job=x", "takes no query or fragment"),
    ],
)
def test_a_bad_pushgateway_url_names_the_setting_and_not_its_credentials(url: str, says: str) -> None:
    from flows.settings import ConfigError

    with pytest.raises(ConfigError) as err:
        load_settings({"RAGLINE_HOME": "/nonexistent", "RAGLINE_METRICS__PUSHGATEWAY": url.replace("//", "//u:pw@")})
    assert f"environment RAGLINE_METRICS__PUSHGATEWAY: metrics.pushgateway: Value error, {says}" in str(err.value)
    assert "pw" not in str(err.value)


def test_a_good_pushgateway_url_is_kept_secret() -> None:
    settings = load_settings({"RAGLINE_HOME": "/nonexistent", "RAGLINE_METRICS__PUSHGATEWAY": "https://u:pw@gw:9091"})
    assert settings.metrics.pushgateway is not None and "pw" not in repr(settings.metrics)
    assert settings.metrics.pushgateway.get_secret_value() == "https://u:pw@gw:9091"
