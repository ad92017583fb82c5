"""`ragline serve` as users run it: a subprocess (uvicorn) with its own RAGLINE_HOME and local Prefect server, the
API on 127.0.0.1, `ragline trigger`, `search`, `status` and `quarantine list` as its clients, a burst of
searches and triggers against small queues, a cron deployment that fires and publishes its artifact, and a
draining stop on SIGTERM. One serve process is shared by the module's tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.db import fresh_database
from tests.support.pdfgen import text_pdf
from tests.support.prefect import PrefectServer

pytestmark = pytest.mark.slow

FILLER = (
    "The cartographer redrew the estuary after every spring flood, marking new sandbars, moved channels and "
    "the drowned pilings of the old mill with a fine steel pen. "
)


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    home: Path
    env: dict[str, str]
    url: str
    shelf: Path
    log: Path

    def ragline(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "ragline", *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and done.returncode != 0:
            raise AssertionError(f"ragline {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAGLINE_"))}
    return {**env, "RAGLINE_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, pg_server: str, prefect_server: PrefectServer) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("serve")
    home, shelf = prefect_server.ragline_home(root / "home"), root / "shelf"  # the session's Prefect server
    text_pdf(shelf / "tides.pdf", ["Spring tides at the estuary mouth rise four metres above the chart datum."])
    config = root / "ragline.yaml"
    config.write_text(
        "serve: {port: 0, workers: 1, queue_size: 1, max_body_bytes: 3000000, poll_seconds: 2,\n"
        "        search_concurrency: 2, search_queue: 8}\n"
        f'sources:\n  - {{kind: pdf, name: shelf, paths: ["{shelf}"], schedule: "* * * * *"}}\n'
    )
    env = _env(home, RAGLINE_CONFIG=str(config), RAGLINE_DATABASE_URL=fresh_database(pg_server))
    # Files, not pipes: scheduled runs stream their output through serve, and a full pipe would block it.
    log = root / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragline", "-v", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        url = _wait_ready(proc, home, log)
        yield Serve(proc, home, env, url, shelf, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[str], home: Path, log: Path, timeout: float = 300) -> str:
    """The endpoint answers 503 while it warms up, then 200 on /readyz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ragline serve exited ({proc.returncode}): {log.read_text()}")
        state = home / "serve.json"
        if state.exists():
            url = str(json.loads(state.read_text())["url"])
            try:
                status = httpx.get(f"{url}/readyz", timeout=5).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                return url
        time.sleep(0.1)
    raise AssertionError("ragline serve was not ready in time")


def _post_pdf(url: str, path: Path, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/runs",
        content=path.read_bytes(),
        params={"filename": path.name, **params},
        headers={"Content-Type": "application/pdf"},
        timeout=30,
    )


def _wait_run(url: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record: dict[str, Any] = httpx.get(f"{url}/v1/runs/{run_id}", timeout=10).json()
        if record["state"] not in ("queued", "running"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not finished after {timeout} s")


def test_posted_pdf_is_searchable_and_a_duplicate_gets_the_same_run(serve: Serve, tmp_path: Path) -> None:
    pdf = text_pdf(tmp_path / "heron.pdf", ["A grey heron named Bartholomew fishes the weir at Quillmouth every dawn."])
    first = _post_pdf(serve.url, pdf)
    assert first.status_code == 202, first.text
    run = first.json()
    assert run["state"] in ("queued", "running") and not run["duplicate"]
    assert first.headers["Location"] == f"/v1/runs/{run['run_id']}"
    done = _wait_run(serve.url, run["run_id"])
    assert done["state"] == "completed" and done["counts"]["committed"] == 1 and done["store_run_id"]

    again = _post_pdf(serve.url, pdf, filename="renamed.pdf")  # same content: same run
    assert again.status_code == 202 and again.json()["run_id"] == run["run_id"] and again.json()["duplicate"]

    hits = json.loads(serve.ragline("search", "heron fishing at the weir", "-k", "1", "--json").stdout)
    assert hits and "Bartholomew" in hits[0]["text"] and hits[0]["source"] == "inbox"
    assert hits[0]["title"] == "heron" and hits[0]["page"] == 1
    status = json.loads(serve.ragline("status", "--json").stdout)
    assert status["sources"]["inbox"]["last_run"]["status"] == "completed"


def test_trigger_cli_waits_and_reports(serve: Serve, tmp_path: Path) -> None:
    pdf = text_pdf(tmp_path / "otter.pdf", ["Otters in the millrace stack pebbles into small cairns at dusk."])
    out = serve.ragline("trigger", "pdf", str(pdf), "--source", "field-notes", "--wait")
    run_id, rest = out.stdout.split(" ", 1)
    assert rest.startswith("completed: 1 ingested") and len(run_id) == 32
    plain = serve.ragline("trigger", "pdf", str(pdf), "--source", "field-notes")
    assert plain.stdout.strip() == run_id  # identical request: the same run

    records = serve.ragline("trigger", "source", "shelf", str(serve.shelf / "tides.pdf"), "--wait", "--json")
    assert json.loads(records.stdout)["state"] == "completed"

    outside = serve.ragline("trigger", "source", "shelf", str(pdf), "--wait", check=False)
    assert outside.returncode == 1 and "is not under the paths of source 'shelf'" in outside.stderr
    unknown = serve.ragline("trigger", "source", "nope", check=False)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "no source named 'nope'" in unknown.stderr
    down = serve.ragline("trigger", "url", "http://127.0.0.1:1/gone.pdf", "--wait", check=False)
    assert down.returncode == 1 and "(403): refused to fetch http://127.0.0.1:1/gone.pdf" in down.stderr
    assert "127.0.0.1 is a loopback address" in down.stderr  # refused end to end, never contacted


def test_a_full_queue_answers_429_with_retry_after(serve: Serve, tmp_path: Path) -> None:
    # 40 pages keep the single worker busy for seconds; the queue holds one run: a third request is shed.
    big = text_pdf(tmp_path / "big.pdf", [f"Survey sheet {p}. " + FILLER * 12 for p in range(40)])
    answers = [_post_pdf(serve.url, big)]
    for i in range(4):
        small = text_pdf(tmp_path / f"s{i}.pdf", [f"Buoy {i} marks the channel at the estuary's {i}th bend."])
        answers.append(_post_pdf(serve.url, small))
    codes = [a.status_code for a in answers]
    assert codes[0] == 202 and 429 in codes, codes
    shed = answers[codes.index(429)]
    assert int(shed.headers["Retry-After"]) >= 1 and "queue is full" in shed.json()["error"]
    for a in answers:
        if a.status_code == 202:
            assert _wait_run(serve.url, a.json()["run_id"], timeout=300)["state"] == "completed"


def _raw(url: str, request: bytes) -> str:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after refusing the body
            answer += chunk
        return answer.decode()


def test_limits_and_bad_requests(serve: Serve) -> None:
    head = b"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/pdf\r\n"
    too_big = _raw(serve.url, head + b"Content-Length: 3000001\r\n\r\n")
    assert too_big.startswith("HTTP/1.1 413") and "exceeds 3000000 bytes" in too_big
    no_body = _raw(serve.url, head + b"Connection: close\r\n\r\n")
    assert no_body.startswith("HTTP/1.1 400") and "the PDF body is empty" in no_body

    wrong_type = httpx.post(f"{serve.url}/v1/runs", content=b"hello", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    remote_only = httpx.post(f"{serve.url}/v1/runs", json={"source": "nope", "ids": ["1"]})
    assert remote_only.status_code == 422 and "no source named 'nope'" in remote_only.json()["error"]
    assert httpx.get(f"{serve.url}/v1/runs/0123").status_code == 404
    assert httpx.get(f"{serve.url}/healthz").json() == {"status": "alive"}


def test_reading_commands_answer_from_the_warm_service_as_they_would_in_process(serve: Serve) -> None:
    args = ("search", "spring tides at the estuary", "-k", "3", "--json")
    serve.ragline("trigger", "source", "shelf", str(serve.shelf / "tides.pdf"), "--wait")
    warm = serve.ragline("-v", *args)
    assert "answered by the service at" in warm.stderr
    alone = {**serve.env, "RAGLINE_SERVE_URL": "http://127.0.0.1:9"}  # nothing listens there: in-process
    cold = subprocess.run(
        [sys.executable, "-m", "ragline", "-v", *args], env=alone, capture_output=True, text=True, timeout=300
    )
    assert cold.returncode == 0 and "answered by the service" not in cold.stderr
    assert json.loads(warm.stdout) and warm.stdout == cold.stdout  # the same hits, the same JSON
    for command in (("status", "--json"), ("quarantine", "list", "--json")):
        through = json.loads(serve.ragline(*command).stdout)
        here = json.loads(
            subprocess.run(
                [sys.executable, "-m", "ragline", *command], env=alone, capture_output=True, text=True, timeout=300
            ).stdout
        )
        if command[0] == "status":  # the cron deployment may finish a run of `shelf` between the two calls
            for data in (through, here):
                for source in data["sources"].values():
                    source.pop("last_run")
        assert through == here
    text = serve.ragline("search", "spring tides at the estuary", "-k", "1").stdout
    assert text.startswith("1. [") and "tides.pdf" in text


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_burst_of_searches_and_triggers_is_answered_and_nothing_is_lost(serve: Serve, tmp_path: Path) -> None:
    """200 searches and 100 triggers at once against queues of 1 run and 2+8 searches: every request gets an
    answer (2xx, 429 or 503), every admitted run completes, and the process stays within its memory bound."""
    pdfs = [
        text_pdf(tmp_path / f"b{i}.pdf", [f"Burst notice {i}: the sluice gate {i} opens at dawn."]) for i in range(100)
    ]
    before = _rss_kib(serve.proc.pid)

    async def burst() -> list[tuple[str, int, dict[str, Any]]]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=serve.url, timeout=120, limits=limits) as client:

            async def search(i: int) -> tuple[str, int, dict[str, Any]]:
                answer = await client.post("/v1/search", json={"query": f"sluice gate {i} at dawn", "k": 5})
                return "search", answer.status_code, answer.json()

            async def trigger(pdf: Path) -> tuple[str, int, dict[str, Any]]:
                answer = await client.post(
                    "/v1/runs", content=pdf.read_bytes(), headers={"Content-Type": "application/pdf"}
                )
                return "trigger", answer.status_code, answer.json()

            jobs = [search(i) for i in range(200)] + [trigger(p) for p in pdfs]
            return list(await asyncio.gather(*jobs))

    answers = asyncio.run(burst())
    codes = {(kind, code) for kind, code, _ in answers}
    assert {code for _, code in codes} <= {200, 202, 429, 503}, codes
    assert ("search", 200) in codes and ("search", 429) in codes  # served and shed
    assert ("trigger", 202) in codes and {("trigger", 429), ("trigger", 503)} & codes  # admitted and shed
    for _, code, body in answers:
        if code in (429, 503):
            assert body["error"]
    admitted = [body["run_id"] for kind, code, body in answers if kind == "trigger" and code == 202]
    for run_id in admitted:
        assert _wait_run(serve.url, run_id, timeout=300)["state"] == "completed"
    shed = httpx.get(f"{serve.url}/metrics", timeout=30).text
    assert 'ragline_shed_requests_total{status="429",what="search"}' in shed  # an autoscaler sees the shedding
    grown_mib = (_rss_kib(serve.proc.pid) - before) / 1024
    assert grown_mib < 512, f"serve grew by {grown_mib:.0f} MiB in the burst"
    inbox = serve.home / "inbox"
    assert list(inbox.glob("??/*/*.pdf")) == []  # shed and settled alike: no posted file is left behind
    assert list((inbox / "journal").glob("*.json")) == []


def test_an_open_address_without_a_token_is_refused(serve: Serve) -> None:
    done = serve.ragline("serve", "--host", "0.0.0.0", "--port", "0", "--no-schedules", check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "serve.host 0.0.0.0 is reachable from other machines" in done.stderr and "allow_anonymous" in done.stderr


def _model_loads(serve: Serve) -> int:
    return sum(1 for line in serve.log.read_text().splitlines() if re.search(r"INFO: loaded .* on cpu", line))


def test_scheduled_deployment_fires_in_the_warm_process_and_publishes_its_artifact(serve: Serve) -> None:
    """The cron run is a Prefect flow run (states, artifact) executed by the serve process itself: no model is
    loaded for it."""
    from flows.artifacts import counts_key

    loads = _model_loads(serve)
    assert loads >= 1  # the warm-up's

    prefect = json.loads((serve.home / "prefect" / "server.json").read_text())["url"]
    deadline = time.monotonic() + 150
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = httpx.post(
            f"{prefect}/flow_runs/filter",
            json={"flow_runs": {"name": {"any_": ["ingest-shelf"]}}, "limit": 20},
            timeout=10,
        ).json()
        runs = [r for r in found if r["deployment_id"] and r["state_type"] == "COMPLETED"]
        if runs:
            break
        time.sleep(2)
    assert runs, "no completed run of the cron deployment ingest-source/shelf within 150 s"
    run = runs[0]
    deployment = httpx.get(f"{prefect}/deployments/{run['deployment_id']}", timeout=10).json()
    assert deployment["name"] == "shelf" and {"ragline", "source:shelf", "kind:pdf"} <= set(deployment["tags"])
    assert deployment["schedules"][0]["schedule"]["cron"] == "* * * * *"
    assert run["parameters"] == {"source": "shelf"}
    artifacts = httpx.post(
        f"{prefect}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
        timeout=10,
    ).json()
    assert counts_key("shelf") in {a["key"] for a in artifacts}
    assert "in this process" in serve.log.read_text() and _model_loads(serve) == loads


def test_sigterm_drains_and_loses_nothing(serve: Serve, tmp_path: Path) -> None:
    """A run in progress at SIGTERM finishes; whatever was admitted is committed or journaled for the next
    start."""
    big = text_pdf(tmp_path / "late.pdf", [f"Late survey sheet {p}. " + FILLER * 12 for p in range(20)])
    posted = _post_pdf(serve.url, big)
    assert posted.status_code == 202
    time.sleep(0.5)
    serve.proc.send_signal(signal.SIGTERM)
    serve.proc.wait(120)
    assert serve.proc.returncode == 0
    output = serve.log.read_text()
    assert "ragline: stopped" in output and "Traceback" not in output
    assert not (serve.home / "serve.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{serve.url}/healthz", timeout=5)
    journaled = list((serve.home / "inbox" / "journal").glob("*.json"))
    committed = serve.ragline("search", "Late survey sheet", "-k", "1", "--json").stdout
    assert journaled or "Late survey sheet" in committed
