"""``ragline serve`` (the warm service: its API on uvicorn, and the scheduled deployments run in-process),
``ragline trigger pdf|url|source`` (its client), ``ragline deploy render`` (``deploy/prefect.yaml``) and
``ragline stop`` (the background services under RAGLINE_HOME).

Errors are one line on stderr and a non-zero exit, as everywhere in the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ragline.client import auth_headers, endpoint, error_of
from ragline.context import Context, fail

if TYPE_CHECKING:
    import httpx

    from flows.scheduled import ScheduledRuns
    from flows.serve import Service
    from flows.settings import ServeSettings

# -- serve --------------------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    from flows.serve import ServeError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port} (serve.host/serve.port): {err.strerror or err}") from err
    return sock


async def _run_service(
    service: Service, serve_settings: ServeSettings, scheduled: ScheduledRuns | None, names: str
) -> None:
    """uvicorn and the scheduled runs on one event loop, until SIGTERM/SIGINT (drain, then stop) or a failure."""
    import uvicorn

    from flows.serve import ServeError
    from flows.serve_api import create_app
    from flows.serve_state import write_state

    sock = _bind(serve_settings.host, serve_settings.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the loop's handlers below decide how to stop

    config = uvicorn.Config(
        create_app(service),
        log_config=None,
        access_log=False,
        lifespan="on",
        limit_concurrency=2 * serve_settings.max_connections,  # a backstop: the app sheds at max_connections
        timeout_graceful_shutdown=int(serve_settings.read_timeout),
    )
    server = Server(config)
    stopping = asyncio.Event()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    write_state(service.services.settings.home, url, serve_settings.token_env)
    click.echo(f"ragline: service {url} (warming up)", err=True)
    if scheduled is not None:
        await scheduled.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    failure: str | None = None
    announced = False
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.25)
            if not announced and service.book.ready:
                announced = True
                click.echo(f"ragline: ready: service {url}; scheduled deployments: {names}", err=True)
            failure = service.failure or (scheduled.failure() if scheduled else None)
            if failure is None and serving.done():
                failure = "the HTTP server stopped"
            if failure is not None:
                break
    finally:
        click.echo("ragline: shutting down", err=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        if scheduled is not None:
            await scheduled.stop(serve_settings.drain_seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if failure is not None:
        raise ServeError(failure)  # one line, exit 1


@click.command()
@click.option("--host", default=None, help="Override serve.host.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Override serve.port (0: a free port).")
@click.option("--no-schedules", is_flag=True, help="Only the service: do not serve the deployments.")
@click.pass_obj
def serve(obj: Context, host: str | None, port: int | None, no_schedules: bool) -> None:
    """Serve the API (ingestion, search, operations) and the scheduled deployments until SIGTERM or SIGINT."""
    from flows.deployments import deployment_specs
    from flows.prefect_server import configure
    from flows.serve import ServeError, Service
    from telemetry import gpu, push

    settings = obj.settings
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    serve_settings = settings.serve.model_copy(update=overrides)
    obj.services.calibrate_at_start = True  # a long-lived process: measure the device's precision once
    push.scraped()  # served at /metrics, with the GPU telemetry: runs in this process never push
    gpu.register()
    service = Service(obj.services, serve_settings)  # refuses an open non-loopback address, a missing token
    specs = [] if no_schedules else deployment_specs(settings)  # bad crons fail here, before anything starts
    configure(settings.home, settings.prefect)  # scheduled runs and source slots need the Prefect server
    scheduled = None
    if specs:
        from flows.deployments import runner_deployments
        from flows.scheduled import ScheduledRuns

        # Built here, in a sync context: Prefect's to_deployment returns a coroutine inside an event loop.
        deployments = runner_deployments(specs)
        scheduled = ScheduledRuns(
            deployments,
            limit=serve_settings.scheduled_runs,
            poll_seconds=serve_settings.poll_seconds,
            ready=lambda: service.book.ready,
        )
    names = ", ".join(s.full_name for s in specs) or "none"
    try:
        asyncio.run(_run_service(service, serve_settings, scheduled, names))
    except ServeError as err:
        fail(str(err))
    click.echo("ragline: stopped", err=True)


# -- trigger (client) ---------------------------------------------------------------------------------------


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in (
        click.option("--url", default=None, help="Endpoint (default: RAGLINE_SERVE_URL, then the running serve)."),
        click.option("--wait", is_flag=True, help="Wait until the run is done and print how it ended."),
        click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits."),
        click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON."),
    ):
        func = option(func)
    return func


def _submit(obj: Context, url: str | None, wait: bool, timeout: float, as_json: bool, **post: Any) -> None:
    import httpx

    base = endpoint(obj, url)
    started = time.monotonic()
    with httpx.Client(base_url=base, timeout=30.0, headers=auth_headers(obj)) as client:
        try:
            answer = client.post("/v1/runs", **post)
        except httpx.TransportError as err:
            fail(f"no trigger endpoint at {base} ({type(err).__name__}): is `ragline serve` running?")
        if answer.status_code in (429, 503):
            retry = answer.headers.get("Retry-After", "?")
            fail(f"{base} is not taking runs now ({answer.status_code}: {error_of(answer)}); retry after {retry} s")
        if answer.status_code != 202:
            fail(f"{base} refused the request ({answer.status_code}): {error_of(answer)}")
        record: dict[str, Any] = answer.json()
        if wait:
            record = _wait(client, base, record, timeout)
    _report(record, as_json, wait, time.monotonic() - started)


def _wait(client: httpx.Client, base: str, record: dict[str, Any], timeout: float) -> dict[str, Any]:
    import httpx

    from flows.trigger import RunState

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
            fail(f"status of run {record['run_id']}: {answer.status_code}: {error_of(answer)}")
        record = answer.json()
    return record


def _report(record: dict[str, Any], as_json: bool, waited: bool, seconds: float) -> None:
    from flows.trigger import RunState

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
    if record["state"] in (RunState.FAILED, RunState.EXPIRED, RunState.CANCELLED):
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
