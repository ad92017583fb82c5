"""OpenTelemetry traces of ragline's runs, exported over OTLP/HTTP only when the operator asks for it.

``setup()`` installs an SDK ``TracerProvider`` (resource ``service.name=ragline``, ``service.instance.id`` the
host) with a batch processor and the OTLP/HTTP exporter when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; the SDK reads every other ``OTEL_*`` variable itself (headers,
timeout, sampler, batch sizes, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). Without them, or with
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``, nothing is installed: the API stays a no-op, no
thread starts, the SDK is not even imported, and ragline's spans cost a function call each.

A provider someone else installed first (``opentelemetry-instrument``, an embedding application) is used as
it is, never replaced. Prefect 3 installs none: it only records its flow and task run spans on the global
provider (``prefect.telemetry.run_telemetry``), so with ours installed they are exported too, in the same
traces as ragline's run spans.

Called lazily at the edges (CLI commands, ``ragline serve``, the flows, every recorded run), so importing
this module does no work; ``flush()`` at a run's end sends its spans before a CLI process exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from opentelemetry import trace

log = logging.getLogger(__name__)

TRACER_NAME = "ragline"
FLUSH_MILLIS = 3000
"""How long a run's end waits for its spans to be sent (a collector that is down costs a run this, once)."""

_lock = threading.Lock()
_provider: Any = None
"""The provider ``setup`` installed (an SDK ``TracerProvider``), None when it installed none."""
_decided = False


def _wanted(environ: dict[str, str] | os._Environ[str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup() -> bool:
    """Install the exporting provider when the environment asks for one (once per process; later calls are
    a lock and a flag). Returns whether spans are recorded, by ours or by a provider installed before."""
    global _provider, _decided
    with _lock:
        if not _decided:
            _decided = True
            if _wanted(os.environ) and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                _provider = _install()
    return enabled()


def _install() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # ragline's defaults, then what the operator's OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say over them.
    ours = Resource.create({SERVICE_NAME: "ragline", SERVICE_INSTANCE_ID: socket.gethostname()})
    provider = TracerProvider(resource=ours.merge(OTELResourceDetector().detect()))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("exporting traces over OTLP/HTTP")
    return provider


def enabled() -> bool:
    """Whether spans are recorded in this process (a recording provider is installed)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def flush(timeout_millis: int = FLUSH_MILLIS) -> None:
    """Send the spans ended so far (a run's end: the process may exit right after). Never raises: a
    collector that is away loses spans, not the run."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is None:
        return
    try:
        if not force_flush(timeout_millis):
            log.warning("traces not all sent within %d ms", timeout_millis)
    except Exception:  # observability never fails the work it watches
        log.warning("could not flush traces", exc_info=True)


def trace_id(span: trace.Span) -> str | None:
    """The span's trace id as 32 hex digits (how collectors and UIs show it); None for a span not recorded."""
    context = span.get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid and span.is_recording() else None


_SECRET_KEYS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "sig", "signature", "credential")


def safe_url(uri: str) -> str:
    """``uri`` fit for a span attribute: no user or password, and query values whose names suggest a secret
    (``access_token``, ``api_key``, ``sig``...) replaced by ``REDACTED``."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri  # a path, or no URL at all
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "REDACTED" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in pairs], safe="/:"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
