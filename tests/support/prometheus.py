"""A real Prometheus (Debian's ``prometheus``, 2.42) and Pushgateway (``prometheus-pushgateway``, 1.5.1) for the
tests: each on a free loopback port with its own config and storage under the test's temporary directory,
ready when its ``/-/ready`` answers, stopped by pid (neither forks). Missing packages fail the tests with the
command that installs them (``make sysdeps``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.realwiki import free_port

INSTALL_COMMAND = "apt-get install -y --no-install-recommends prometheus prometheus-pushgateway"
T = TypeVar("T")


def binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool, prometheus-pushgateway), or a failure saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: on Debian 12, as root: {INSTALL_COMMAND} (or make sysdeps)")
    return path


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0, every: float = 0.2) -> T:
    """Poll ``probe`` until it returns something other than None; a deadline, not a sleep, bounds the wait."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:g} s")
        time.sleep(every)


@contextmanager
def _server(argv: list[str], url: str, log: Path) -> Iterator[str]:
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool | None:
        if proc.poll() is not None:
            raise AssertionError(f"{argv[0]} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            return True if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200 else None
        except httpx.HTTPError:
            return None

    try:
        eventually(ready, f"{argv[0]} ready at {url}", timeout=60)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def pushgateway(root: Path) -> Iterator[str]:
    """A Pushgateway on 127.0.0.1 without persistence; yields its base URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        binary("prometheus-pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        "--persistence.file=",  # Debian's build persists to /var/lib/prometheus by default: shared by all
        "--log.level=warn",
    ]
    with _server(argv, f"http://127.0.0.1:{port}", root / "pushgateway.log") as url:
        yield url


@contextmanager
def prometheus(root: Path, config: dict[str, Any] | str) -> Iterator[str]:
    """A Prometheus on 127.0.0.1 with ``config`` (a mapping is written as YAML) and a fresh TSDB; yields its
    base URL."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    config_file = root / "prometheus.yml"
    config_file.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with _server(argv, f"http://127.0.0.1:{port}", root / "prometheus.log") as url:
        yield url


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query over Prometheus' HTTP API: the result vector."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", f"{promql}: {answer.status_code} {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def values(url: str, promql: str, by: str) -> dict[str, float]:
    """The query's samples as {value of label ``by``: number}."""
    return {r["metric"].get(by, ""): float(r["value"][1]) for r in query(url, promql)}


def targets_up(url: str) -> dict[str, str]:
    """{scrape URL: health} of the active targets."""
    active = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["scrapeUrl"]: f"{t['health']} {t.get('lastError') or ''}".strip() for t in active}
