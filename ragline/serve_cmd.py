"""``ragline serve`` (scheduled deployments + the on-demand trigger endpoint on warm workers),
``ragline trigger pdf|url|source`` (its client), ``ragline deploy render`` (``deploy/prefect.yaml``) and
``ragline stop`` (the background services under RAGLINE_HOME).

Errors are one line on stderr and a non-zero exit, as everywhere in the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from flows.trigger import RunState
from ragline.context import Context, fail

if TYPE_CHECKING:
    import httpx

    from flows.deployments import DeploymentSpec
    from flows.settings import ServeSettings

_FINAL_FAILED = (RunState.FAILED, RunState.EXPIRED, RunState.CANCELLED)


# -- serve --------------------------------------------------------------------------------------------------


class _ScheduledRuns:
    """A Prefect Runner serving the deployments, on its own event loop in its own thread: the main thread
    keeps the signal handlers (Prefect's Runner installs its own SIGTERM handler only on the main thread) and
    stops the runner through its loop. Scheduled runs execute in subprocesses, as Prefect's runners do."""

    def __init__(self, specs: list[DeploymentSpec], settings: ServeSettings) -> None:
        from flows.deployments import runner_deployments

        # Built here, in a sync context: Prefect's to_deployment returns a coroutine inside an event loop.
        self.deployments = runner_deployments(specs)
        self.settings = settings
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread = threading.Thread(target=self._main, name="prefect-runner", daemon=True)

    def start(self, timeout: float) -> None:
        self._thread.start()
        while not self.started.wait(0.2):
            if self.done.is_set():
                raise RuntimeError(f"serving the deployments failed: {self.error}") from self.error
            timeout -= 0.2
            if timeout <= 0:
                raise RuntimeError("the deployments were not registered with Prefect in time")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as err:  # noqa: BLE001 - reported by the main thread, which exits non-zero
            self.error = err
        finally:
            loop.close()
            self.done.set()

    async def _serve(self) -> None:
        from prefect.runner import Runner

        name = f"ragline-serve-{socket.gethostname()}-{os.getpid()}".replace("/", "_").replace("%", "_")
        runner = Runner(name=name, limit=self.settings.scheduled_runs, query_seconds=self.settings.poll_seconds)
        for deployment in self.deployments:
            await runner.aadd_deployment(deployment)
        self._runner = runner
        self.started.set()
        await runner.start()

    def stop(self, timeout: float = 30.0) -> None:
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None and runner.started and not self.done.is_set():
            future = asyncio.run_coroutine_threadsafe(runner.astop(), loop)
            try:
                future.result(timeout)
            except Exception as err:  # noqa: BLE001 - shutting down anyway; say why it was not clean
                click.echo(f"ragline: warning: stopping the Prefect runner: {type(err).__name__}: {err}", err=True)
        self._thread.join(timeout)


@click.command()
@click.option("--host", default=None, help="Override serve.host.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Override serve.port (0: a free port).")
@click.option("--no-schedules", is_flag=True, help="Only the trigger endpoint: do not serve the deployments.")
@click.pass_obj
def serve(obj: Context, host: str | None, port: int | None, no_schedules: bool) -> None:
    """Serve the scheduled deployments and the on-demand trigger endpoint until SIGTERM or SIGINT."""
    from flows.deployments import deployment_specs
    from flows.prefect_server import configure
    from flows.serve import ServeError, TriggerServer

    settings = obj.settings
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    serve_settings = settings.serve.model_copy(update=overrides)
    specs = [] if no_schedules else deployment_specs(settings)  # bad crons fail here, before anything starts
    configure(settings.home, settings.prefect)  # scheduled runs and source slots need the Prefect server

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = TriggerServer(obj.services, serve_settings)
    scheduled = _ScheduledRuns(specs, serve_settings) if specs else None
    try:
        url = server.bind()
        click.echo(f"ragline: trigger endpoint {url} (warming up)", err=True)
        server.warm()
        if scheduled is not None:
            scheduled.start(timeout=settings.prefect.startup_timeout)
        names = ", ".join(s.full_name for s in specs) or "none"
        click.echo(f"ragline: ready: trigger endpoint {url}; scheduled deployments: {names}", err=True)
        while not stop.wait(0.5):
            if scheduled is not None and scheduled.done.is_set():
                raise RuntimeError(f"the Prefect runner stopped: {scheduled.error}")
    except ServeError as err:
        fail(str(err))
    finally:
        click.echo("ragline: shutting down", err=True)
        server.shutdown()
        if scheduled is not None:
            scheduled.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("ragline: stopped", err=True)


# -- trigger (client) ---------------------------------------------------------------------------------------


def _endpoint(obj: Context, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("RAGLINE_SERVE_URL"):
        return os.environ["RAGLINE_SERVE_URL"].rstrip("/")
    from flows.serve import read_state

    state = read_state(obj.settings.home)
    if state is not None:
        return str(state["url"]).rstrip("/")
    serve_settings = obj.settings.serve
    return f"http://{serve_settings.host}:{serve_settings.port}"


def _auth(obj: Context) -> dict[str, str]:
    name = obj.settings.serve.token_env
    if name is None:
        return {}
    token = os.environ.get(name)
    if not token:
        fail(f"serve.token_env names {name}, which is not set in the environment")
    return {"Authorization": f"Bearer {token}"}


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in (
        click.option("--url", default=None, help="Endpoint (default: RAGLINE_SERVE_URL, then the running serve)."),
        click.option("--wait", is_flag=True, help="Wait until the run is done and print how it ended."),
        click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits."),
        click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON."),
    ):
        func = option(func)
    return func


def _error_of(answer: httpx.Response) -> str:
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        return answer.text.strip().splitlines()[0] if answer.text.strip() else answer.reason_phrase


def _submit(obj: Context, url: str | None, wait: bool, timeout: float, as_json: bool, **post: Any) -> None:
    import httpx

    base = _endpoint(obj, url)
    started = time.monotonic()
    with httpx.Client(base_url=base, timeout=30.0, headers=_auth(obj)) as client:
        try:
            answer = client.post("/v1/runs", **post)
        except httpx.TransportError as err:
            fail(f"no trigger endpoint at {base} ({type(err).__name__}): is `ragline serve` running?")
        if answer.status_code in (429, 503):
            retry = answer.headers.get("Retry-After", "?")
            fail(f"{base} is not taking runs now ({answer.status_code}: {_error_of(answer)}); retry after {retry} s")
        if answer.status_code != 202:
            fail(f"{base} refused the request ({answer.status_code}): {_error_of(answer)}")
        record: dict[str, Any] = answer.json()
        if wait:
            record = _wait(client, base, record, timeout)
    _report(record, as_json, wait, time.monotonic() - started)


def _wait(client: httpx.Client, base: str, record: dict[str, Any], timeout: float) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    delay = 0.05
    while record["state"] in (RunState.QUEUED, RunState.RUNNING):
        if time.monotonic() > deadline:
            fail(f"run {record['run_id']} is still {record['state']} after {timeout:g} s")
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)
        try:
            answer = client.get(f"/v1/runs/{record['run_id']}")
        except httpx.TransportError as err:
            fail(f"lost the trigger endpoint at {base} while waiting ({type(err).__name__})")
        if answer.status_code != 200:
            fail(f"status of run {record['run_id']}: {answer.status_code}: {_error_of(answer)}")
        record = answer.json()
    return record


def _report(record: dict[str, Any], as_json: bool, waited: bool, seconds: float) -> None:
    if as_json:
        click.echo(json.dumps(record))
    elif not waited:
        click.echo(record["run_id"])
    else:
        c = record.get("counts") or {}
        click.echo(
            f"{record['run_id']} {record['state']}: {c.get('committed', 0)} ingested, "
            f"{c.get('unchanged', 0)} unchanged, {c.get('quarantined', 0)} quarantined in {seconds:.1f} s"
        )
    if record.get("note"):
        click.echo(f"ragline: note: {record['note']}", err=True)
    if record["state"] in _FINAL_FAILED:
        fail(f"run {record['run_id']} {record['state']}: {record.get('error') or 'no reason given'}")
    if record["state"] == RunState.COMPLETED_WITH_QUARANTINE:
        click.echo("ragline: some documents were quarantined: see `ragline quarantine list`", err=True)


@click.group()
def trigger() -> None:
    """Ask a running `ragline serve` to ingest now, on its warm workers."""


@trigger.command("pdf")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", default=None, help="Source to record it under (default: serve.inbox_source).")
@_client_options
@click.pass_obj
def trigger_pdf(
    obj: Context, file: Path, source: str | None, url: str | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Post a PDF file."""
    params = {"filename": file.name, **({"source": source} if source else {})}
    content = file.read_bytes()
    headers = {"Content-Type": "application/pdf"}
    _submit(obj, url, wait, timeout, as_json, content=content, params=params, headers=headers)


@trigger.command("url")
@click.argument("target")
@click.option("--source", default=None, help="Source to record it under (default: serve.inbox_source).")
@_client_options
@click.pass_obj
def trigger_url(
    obj: Context, target: str, source: str | None, url: str | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Have the server fetch and ingest the PDF at TARGET."""
    body: dict[str, Any] = {"url": target, **({"source": source} if source else {})}
    _submit(obj, url, wait, timeout, as_json, json=body)


@trigger.command("source")
@click.argument("name")
@click.argument("ids", nargs=-1)
@_client_options
@click.pass_obj
def trigger_source(
    obj: Context, name: str, ids: tuple[str, ...], url: str | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Ingest records IDS of source NAME now (files of a PDF source; no IDS: the whole source, incrementally)."""
    _submit(obj, url, wait, timeout, as_json, json={"source": name, "ids": list(ids)})


# -- deploy -------------------------------------------------------------------------------------------------


@click.group()
def deploy() -> None:
    """Prefect deployments for work pools."""


@deploy.command("render")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here.")
@click.pass_obj
def deploy_render(obj: Context, output: Path | None) -> None:
    """Render prefect.yaml (a deployment per scheduled source, and the snapshot flow) from the config."""
    from flows.deployments import render_prefect_yaml

    text = render_prefect_yaml(obj.settings)
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}", err=True)


# -- stop ---------------------------------------------------------------------------------------------------


@click.command()
@click.pass_obj
def stop(obj: Context) -> None:
    """Stop the background services ragline started under RAGLINE_HOME (embedded Postgres, Prefect)."""
    from flows.prefect_server import stop_local_server
    from vectorstore.embedded import stop_embedded

    stopped = []
    if stop_local_server(obj.settings.home):
        stopped.append("prefect server")
    if obj.settings.database.url is None and stop_embedded(obj.settings.home):
        stopped.append("embedded postgres")
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
