"""The shipped monitoring configuration against the real thing: Debian's Prometheus (2.42) and Pushgateway (1.5.1)
on loopback ports, running deploy/prometheus/prometheus.yml (targets and the token file pointed at the test's
own, scrape and rule intervals shortened) and alerts.yml, scraping a real `ragline serve` with its operator
token and a Pushgateway that real `ragline ingest pdf` processes push to. Answers are read through Prometheus'
HTTP API, polled until a deadline (scrapes are asynchronous), never timed.

promtool checks the rules and the config and runs the rules' unit tests (alerts_test.yml), which is what shows
the alert expressions fire when they should and stay quiet when they should.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import prometheus
from tests.support.db import migrated_database
from tests.support.pdfgen import text_pdf
from tests.support.prefect import PrefectServer
from tests.test_serve import _env, _wait_ready

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ragline.json"
INSTANCE = "ci-host"  # metrics.instance of the CLI runs: the label their pushed series carry


@dataclass
class Stack:
    serve: str
    token: str
    gateway: str
    prometheus: str
    env: dict[str, str]
    """Environment for `ragline` processes (the serve's database and Prefect server; no serve token)."""
    root: Path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([prometheus.binary("promtool"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def config_for_test(root: Path, serve: str, gateway: str, token_file: Path) -> Path:
    """The shipped prometheus.yml and alerts.yml, copied under ``root``, with the targets and the token file
    pointed at this test's and the intervals shortened; nothing else changes."""
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token_file)
            job["static_configs"] = [{"targets": [serve.removeprefix("http://")]}]
        else:
            job["static_configs"] = [{"targets": [gateway.removeprefix("http://")]}]
    root.mkdir(parents=True, exist_ok=True)
    for rule_file in config["rule_files"]:
        shutil.copy(SHIPPED / rule_file, root / rule_file)
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_server: str, template_database: str, prefect_server: PrefectServer
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("monitoring")
    token = secrets.token_hex(16)
    home = prefect_server.ragline_home(root / "home")
    (root / "serve.yaml").write_text("serve: {port: 0, workers: 1}\n")
    # float32: no precision calibration at start (minutes on a busy 2-core machine); metrics are the subject.
    database = migrated_database(pg_server, template_database)
    env = _env(home, RAGLINE_DATABASE_URL=database, RAGLINE_EMBEDDING__PRECISION="float32")
    serve_env = {
        **env,
        "RAGLINE_CONFIG": str(root / "serve.yaml"),
        "RAGLINE_SERVE__TOKEN_ENV": "RAGLINE_SERVE_TOKEN",
        "RAGLINE_SERVE_TOKEN": token,
    }
    log = root / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragline", "serve", "--no-schedules"],
            env=serve_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        serve = _wait_ready(proc, home, log)
        token_file = root / "serve-token"
        token_file.write_text(token)
        with prometheus.pushgateway(root / "pushgateway") as gateway:
            config = config_for_test(root / "prometheus", serve, gateway, token_file)
            with prometheus.prometheus(root / "prometheus", config.read_text()) as url:
                yield Stack(serve, token, gateway, url, env, root)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_promtool_passes_the_shipped_rules_config_and_rule_tests(tmp_path: Path) -> None:
    _promtool("check", "rules", str(SHIPPED / "alerts.yml"))
    token = tmp_path / "token"
    token.write_text("t")
    config = config_for_test(tmp_path, "http://127.0.0.1:8765", "http://127.0.0.1:9091", token)
    shipped = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    assert yaml.safe_load(config.read_text())["rule_files"] == shipped["rule_files"] == ["alerts.yml"]
    checked = _promtool("check", "config", str(config))
    assert "SUCCESS" in checked.stdout and "rules found" in checked.stdout
    tested = _promtool("test", "rules", str(SHIPPED / "alerts_test.yml"))
    assert "SUCCESS" in tested.stdout


def _value(url: str, promql: str, expected: dict[str, float], by: str) -> dict[str, float] | None:
    got = prometheus.values(url, promql, by)
    return got if got == expected else None


def test_prometheus_scrapes_serve_with_the_token_and_counts_a_posted_pdf(stack: Stack, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {stack.token}"}
    assert httpx.get(f"{stack.serve}/metrics", timeout=10).status_code == 401
    pdf = text_pdf(tmp_path / "lighthouse.pdf", ["The keeper wound the clockwork of the Fresnel lens at dusk."])
    answer = httpx.post(
        f"{stack.serve}/v1/runs",
        content=pdf.read_bytes(),
        params={"filename": pdf.name, "source": "posted"},
        headers={**auth, "Content-Type": "application/pdf"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]

    def finished() -> dict[str, Any] | None:
        record: dict[str, Any] = httpx.get(f"{stack.serve}/v1/runs/{run_id}", headers=auth, timeout=10).json()
        return None if record["state"] in ("queued", "running") else record

    assert prometheus.eventually(finished, "the posted run", timeout=180)["state"] == "completed"

    committed = 'sum by (source) (ragline_documents_total{job="ragline-serve",event="committed"})'
    got = prometheus.eventually(lambda: _value(stack.prometheus, committed, {"posted": 1.0}, "source"), committed)
    assert got == {"posted": 1.0}
    assert prometheus.values(stack.prometheus, 'up{job="ragline-serve"}', "job") == {"ragline-serve": 1.0}
    runs = 'sum by (outcome) (ragline_runs_total{job="ragline-serve",source="posted"})'
    assert prometheus.values(stack.prometheus, runs, "outcome") == {"completed": 1.0}


def _ingest(stack: Stack, folder: Path, source: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "ragline", "ingest", "pdf", str(folder), "--source", source, "--json"],
        env={**stack.env, "RAGLINE_METRICS__PUSHGATEWAY": stack.gateway, "RAGLINE_METRICS__INSTANCE": INSTANCE},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "could not push" not in done.stderr, done.stderr
    counts: dict[str, Any] = json.loads(done.stdout)
    return counts


def test_cli_runs_push_through_the_gateway_and_add_up_by_source(stack: Stack, tmp_path: Path) -> None:
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    text_pdf(alpha / "otter.pdf", ["Otters stack pebbles into small cairns along the millrace at dusk."])
    text_pdf(alpha / "heron.pdf", ["A grey heron fishes the weir below the old mill every morning."])
    text_pdf(beta / "kelp.pdf", ["Kelp forests grow half a metre a day in cold upwelling water."])
    assert _ingest(stack, alpha, "alpha")["committed"] == 2
    assert _ingest(stack, beta, "beta")["committed"] == 1
    # A third process, from zero again: its one new document adds to alpha's total instead of replacing it.
    text_pdf(alpha / "ibis.pdf", ["The ibis probes the estuary mud with its long curved bill."])
    assert _ingest(stack, alpha, "alpha")["committed"] == 1

    committed = f'sum by (source) (ragline_documents_total{{job="ragline",instance="{INSTANCE}",event="committed"}})'
    expected = {"alpha": 3.0, "beta": 1.0}
    got = prometheus.eventually(lambda: _value(stack.prometheus, committed, expected, "source"), committed)
    assert got == expected
    runs = f'sum by (source) (ragline_runs_total{{job="ragline",instance="{INSTANCE}",outcome="completed"}})'
    assert prometheus.values(stack.prometheus, runs, "source") == {"alpha": 2.0, "beta": 1.0}
    # honor_labels: the pushed job and instance, not the gateway's own target labels.
    pushed = prometheus.query(stack.prometheus, 'push_time_seconds{source="alpha"}')
    assert [r["metric"]["instance"] for r in pushed] == [INSTANCE]


def test_every_alert_rule_and_dashboard_query_runs_on_the_real_prometheus(stack: Stack) -> None:
    """Prometheus loaded alerts.yml and evaluates each rule without error; each panel's query parses and runs
    (Grafana's variables given the values it would)."""
    shipped = yaml.safe_load((SHIPPED / "alerts.yml").read_text())
    expected = {rule["alert"] for group in shipped["groups"] for rule in group["rules"]}

    def evaluated() -> dict[str, str] | None:
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = {r["name"]: f"{r['health']} {r.get('lastError', '')}".strip() for g in groups for r in g["rules"]}
        return health if set(health) == expected and all(h == "ok" for h in health.values()) else None

    prometheus.eventually(evaluated, "every alert rule evaluated without error", timeout=60)
    dashboard = json.loads(DASHBOARD.read_text())
    grafana_vars = {"$source": ".*", "$__rate_interval": "1m", "$__range": "1h"}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in grafana_vars.items():
                expr = expr.replace(name, value)
            prometheus.query(stack.prometheus, expr)  # fails with Prometheus' parse error otherwise
