"""Metrics of runs outside ``ragline serve`` (the CLI, Prefect workers' flow-run processes) pushed to a Prometheus
Pushgateway when ``metrics.pushgateway`` is set; ``ragline serve`` is scraped and never pushes (``scraped()``).

Where: job ``ragline``, grouping key ``{instance: <host or metrics.instance>, source: <source>}``, pushed once
each run ends (``after_run``, called where every run's end is watched: flows/runs.py).

Why the counters are added up here, and why PUT: a short process starts its counters at zero, so a plain
``push_to_gateway`` (PUT) or ``pushadd_to_gateway`` (POST) of its registry leaves in the gateway what that
one process counted. Prometheus takes a fall as a counter reset, but a rise from one process's 5 to the next
one's 7 reads as +2 where 7 documents were committed: ``increase()`` undercounts. So each push reads the
group's totals from the gateway and adds what this process counted since its last successful push, and PUTs
the result: the group then holds running totals across every process, a restarted gateway (without
persistence) starts them over (a reset, which Prometheus handles), and PUT rather than POST replaces the group
exactly, so nothing another ragline version left under a metric this one no longer exports lingers.
Gauges (breaker state, GPU memory, drift) are the process's values at the push. Runs of one source never
overlap (the source's concurrency slot), so two processes do not push one group at once.

Only ``ragline_*`` families are pushed: the process and Python collectors describe a process that is gone by
the time Prometheus scrapes the gateway. A process that ran several sources pushes each source's series to
that source's group; series without a ``source`` label (the GPU, the embedding pool) go with the run that just
ended, their counters as increments, so summing over sources stays right.

A push that fails is a warning naming the gateway (never its credentials), never a failed run; the next push
from this process carries the increments it could not deliver.
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import push_to_gateway
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

JOB = "ragline"
PREFIX = "ragline_"
# The samples that only grow, by family type (summary quantiles and every ``_created`` are not among them).
_CUMULATIVE = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
_NUMERIC_LABELS = ("le", "quantile")  # formatted differently by the gateway (Go) and prometheus_client

_go_float = cast(Callable[[str], str], floatToGoString)  # "1.0", "+Inf": how prometheus_client writes ``le``

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # (sample name, sorted labels)


class Secret(Protocol):
    """A setting kept out of reprs and logs (pydantic's SecretStr)."""

    def get_secret_value(self) -> str: ...


class PushSettings(Protocol):
    """What a push needs from ``metrics`` settings (flows.settings.MetricsSettings)."""

    @property
    def pushgateway(self) -> Secret | None: ...

    @property
    def push_timeout(self) -> float: ...

    @property
    def instance(self) -> str | None: ...


class Settings(Protocol):
    """ragline's settings (flows.settings.RaglineSettings), as far as a push reads them."""

    @property
    def metrics(self) -> PushSettings: ...


_scraped = False


def scraped() -> None:
    """Called by ``ragline serve``: this process is scraped at /metrics, so its runs never push."""
    global _scraped
    _scraped = True


def after_run(settings: Settings, source: str) -> None:
    """Push the process's metrics once a run of ``source`` has ended, when ``metrics.pushgateway`` is set and
    the process is not ``ragline serve``."""
    metrics = settings.metrics
    if metrics.pushgateway is None or _scraped:
        return
    instance = metrics.instance or socket.gethostname()
    url = metrics.pushgateway.get_secret_value()
    default_pusher().push(url, source, instance=instance, timeout=metrics.push_timeout)


@dataclass(frozen=True)
class Gateway:
    """A Pushgateway URL split into where to send and how to authenticate (credentials from the URL's
    user-info go into a Basic header, never into a log line)."""

    base: str
    authorization: str | None

    @classmethod
    def parse(cls, url: str) -> Gateway:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact(url)}")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        return cls(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), auth)


def redact(url: str) -> str:
    """The URL without user-info, query or fragment: what a log line may say about a gateway."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class PushError(RuntimeError):
    """The gateway could not be read or refused the push; the message is safe to log."""


def _send(gateway: Gateway) -> Callable[..., Callable[[], None]]:
    """A prometheus_client push handler: the request with the gateway's authorization, the answer's own
    words on a refusal (the gateway says which metric was inconsistent)."""

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        def handle() -> None:
            request = urllib.request.Request(url, data=data, method=method)
            for name, value in headers:
                request.add_header(name, value)
            if gateway.authorization:
                request.add_header("Authorization", gateway.authorization)
            _open(request, timeout)

        return handle

    return handler


def _open(request: urllib.request.Request, timeout: float | None) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # http(s) only: Gateway.parse
            body: bytes = answer.read()
            return body
    except urllib.error.HTTPError as err:
        said = err.read(300).decode(errors="replace").strip().splitlines()
        raise PushError(f"{err.code} {err.reason}" + (f": {said[0]}" if said else "")) from None
    except (OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise PushError(f"{type(err).__name__}: {reason}") from None


def _key(name: str, labels: dict[str, str]) -> SeriesKey:
    normal = {k: _go_float(v) if k in _NUMERIC_LABELS else v for k, v in labels.items()}
    return name, tuple(sorted(normal.items()))


def _cumulative(family: Metric, sample_name: str) -> bool:
    return any(sample_name == family.name + suffix for suffix in _CUMULATIVE.get(family.type, ()))


class Pusher:
    """Pushes one process's ``ragline_*`` metrics; remembers what it already delivered (``_delivered``), so
    each push adds to the gateway's totals only what happened since."""

    def __init__(self, registry: Collector = REGISTRY, extra: Sequence[Collector] = ()) -> None:
        self._collectors = (registry, *extra)
        self._delivered: dict[SeriesKey, float] = {}
        self._lock = threading.Lock()

    def push(self, url: str, source: str, *, instance: str, timeout: float = 3.0) -> bool:
        """Push ``source``'s group; False (and a warning) when the gateway could not be read or refused it."""
        try:
            gateway = Gateway.parse(url)
            with self._lock:
                totals = self._read_group(gateway, instance, source, timeout)
                families, delivered = self._families(source, totals)
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Fixed(families))
                push_to_gateway(
                    gateway.base,
                    job=JOB,
                    registry=registry,
                    grouping_key={"instance": instance, "source": source},
                    timeout=timeout,
                    handler=_send(gateway),
                )
                self._delivered.update(delivered)
        except (PushError, ValueError) as err:
            log.warning("could not push the metrics of source %s to the Pushgateway %s: %s", source, redact(url), err)
            return False
        log.debug("pushed the metrics of source %s to %s", source, redact(url))
        return True

    def _read_group(self, gateway: Gateway, instance: str, source: str, timeout: float) -> dict[SeriesKey, float]:
        """The group's cumulative series as the gateway holds them now (its totals so far)."""
        request = urllib.request.Request(gateway.base + "/metrics", headers={"Accept": "text/plain"})
        if gateway.authorization:
            request.add_header("Authorization", gateway.authorization)
        text = _open(request, timeout).decode()
        group = {"job": JOB, "instance": instance, "source": source}
        totals: dict[SeriesKey, float] = {}
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(PREFIX):
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                if not _cumulative(family, sample.name) or any(labels.get(k) != v for k, v in group.items()):
                    continue
                del labels["job"], labels["instance"]
                totals[_key(sample.name, labels)] = sample.value
        return totals

    def _families(self, source: str, totals: dict[SeriesKey, float]) -> tuple[list[Metric], dict[SeriesKey, float]]:
        """What to PUT: each known family's cumulative series as the gateway's totals plus this process's
        increments, and its gauges as they are now; and the process values that push delivers."""
        out: list[Metric] = []
        delivered: dict[SeriesKey, float] = {}
        names: set[str] = set()
        for collector in self._collectors:
            for family in collector.collect():
                if not family.name.startswith(PREFIX) or family.name in names:
                    continue  # not ragline's, or a collector registered twice (the gateway refuses duplicates)
                names.add(family.name)
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                merged = {k: v for k, v in totals.items() if _cumulative(family, k[0])}
                for sample in family.samples:
                    labels = dict(sample.labels)
                    if labels.setdefault("source", source) != source:
                        continue  # another source's series: its own group
                    if not _cumulative(family, sample.name):
                        if not sample.name.endswith("_created"):
                            copy.add_sample(sample.name, labels, sample.value)
                        continue
                    own = _key(sample.name, dict(sample.labels))
                    key = _key(sample.name, labels)
                    merged[key] = merged.get(key, 0.0) + sample.value - self._delivered.get(own, 0.0)
                    delivered[own] = sample.value
                for (name, labels_), value in sorted(merged.items(), key=_histogram_order):
                    copy.add_sample(name, dict(labels_), value)
                if copy.samples:
                    out.append(copy)
        return out, delivered


def _histogram_order(item: tuple[SeriesKey, float]) -> tuple[Labels, str, float]:
    """Series grouped by labels (``le`` aside), buckets in ascending order: how an exposition lists them."""
    (name, labels), _ = item
    le = dict(labels).get("le")
    return tuple(kv for kv in labels if kv[0] != "le"), name, float(le) if le is not None else 0.0


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


_default: Pusher | None = None


def default_pusher() -> Pusher:
    """The process's pusher: its default registry and the GPU telemetry (``telemetry.gpu``)."""
    global _default
    if _default is None:
        from telemetry.gpu import GpuCollector

        _default = Pusher(REGISTRY, extra=(GpuCollector(),))
    return _default
