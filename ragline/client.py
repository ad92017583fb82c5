"""The CLI's way to a running ``ragline serve``: the URL and token variable it recorded under ``RAGLINE_HOME``
(or ``RAGLINE_SERVE_URL``, or ``--url``). Reading commands ask it first, when there is one, and answer from the
warm process without loading the settings, the store or a model; they work in-process when there is none."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ragline.context import Context, fail

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("ragline.client")

# Answers after which a reading command does its work in-process instead: the service is warming up, stopping,
# or does not take this caller's token; the CLI reaches the store itself anyway.
_FALLBACK = frozenset({401, 403, 404, 429, 503})


def running_service() -> dict[str, Any] | None:
    """The service running for this ``RAGLINE_HOME`` (its process alive): ``{"url", "token_env"}``, found
    without loading the settings. ``RAGLINE_SERVE_URL`` overrides it."""
    from flows.serve_state import read_state, resolve_home

    if os.environ.get("RAGLINE_SERVE_URL"):
        return {"url": os.environ["RAGLINE_SERVE_URL"].rstrip("/"), "token_env": None}
    state = read_state(resolve_home(os.environ))
    if state is None:
        return None
    try:
        os.kill(int(state.get("pid", 0)), 0)
    except (OSError, ValueError):
        return None
    return {"url": str(state["url"]).rstrip("/"), "token_env": state.get("token_env")}


def endpoint(obj: Context, url: str | None) -> str:
    """Where ``ragline trigger`` sends: ``--url``, the running service, else the configured address."""
    if url:
        return url.rstrip("/")
    running = running_service()
    if running is not None:
        return str(running["url"])
    serve_settings = obj.settings.serve
    return f"http://{serve_settings.host}:{serve_settings.port}"


def auth_headers(obj: Context) -> dict[str, str]:
    """The operator's bearer token (``serve.token_env``), never printed."""
    name = obj.settings.serve.token_env
    if name is None:
        return {}
    token = os.environ.get(name)
    if not token:
        fail(f"serve.token_env names {name}, which is not set in the environment")
    return {"Authorization": f"Bearer {token}"}


def warm_call(method: str, path: str, *, json: Any = None, timeout: float = 30.0) -> Any | None:
    """The running service's JSON answer to a reading request, or None when the command should do the work
    itself (no service, not reachable, not ready, not for this caller). A refusal of the request itself (400,
    422) is the user's error either way: it fails here with the service's message."""
    running = running_service()
    if running is None:
        return None
    import httpx

    base = str(running["url"])
    token = os.environ.get(running["token_env"]) if running["token_env"] else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.request(method, base + path, json=json, headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        log.info("no answer from the service at %s (%s): working in-process", base, type(err).__name__)
        return None
    if answer.status_code in _FALLBACK or answer.status_code >= 500:
        log.info("the service at %s answered %d: working in-process", base, answer.status_code)
        return None
    if answer.status_code != 200:
        fail(f"{base}{path}: {answer.status_code}: {error_of(answer)}")
    log.info("answered by the service at %s", base)
    return answer.json()


def error_of(answer: httpx.Response) -> str:
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        return answer.text.strip().splitlines()[0] if answer.text.strip() else answer.reason_phrase
