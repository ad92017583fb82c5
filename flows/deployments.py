"""Prefect deployments built from settings: one per source with a ``schedule`` (the ``ingest-source`` flow),
the ``snapshot-store`` flow when ``snapshots`` is configured, and ``reembed-store`` when ``reembed`` is.

The same specs feed two consumers: ``ragline serve`` (its scheduled runs executed in the serve process,
``flows.scheduled``) and ``deploy/prefect.yaml`` (``prefect deploy --all`` for work pools). Crons and time
zones are checked here, at the edge, with errors naming the config entry, so a typo fails ``ragline serve``
at start instead of a schedule silently never firing. Prefect is imported only to build runner deployments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from flows.settings import ConfigError, RaglineSettings

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import Flow

SOURCE_FLOW = "ingest-source"
SNAPSHOT_FLOW = "snapshot-store"
SNAPSHOT_DEPLOYMENT = "scheduled"
REEMBED_FLOW = "reembed-store"
REEMBED_DEPLOYMENT = "background"
_ENTRYPOINTS = {
    # File paths for prefect.yaml (workers run from the code directory); module paths for `ragline serve`,
    # which may start anywhere as long as ragline is installed.
    SOURCE_FLOW: ("flows/ingest.py:ingest_source", "flows.ingest.ingest_source"),
    SNAPSHOT_FLOW: ("flows/snapshot.py:snapshot_store", "flows.snapshot.snapshot_store"),
    REEMBED_FLOW: ("flows/reembed_flow.py:reembed_store", "flows.reembed_flow.reembed_store"),
}

_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, low, high, names mapped to numbers)
_FIELDS: list[tuple[str, int, int, dict[str, int]]] = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {d: i for i, d in enumerate(_DAYS)}),
]
_ITEM = re.compile(r"^(?:(?P<star>\*)|(?P<lo>[A-Za-z0-9]+)(?:-(?P<hi>[A-Za-z0-9]+))?)(?:/(?P<step>\d+))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:@-]*$")


class CronError(ValueError):
    """A cron expression ragline does not accept; the message says which field and why."""


def _value(token: str, low: int, high: int, names: dict[str, int], what: str) -> int:
    number = names.get(token.lower()) if not token.isdigit() else int(token)
    if number is None:
        raise CronError(f"{what}: {token!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    if not low <= number <= high:
        raise CronError(f"{what}: {number} is outside {low}-{high}")
    return number


def validate_cron(expr: str) -> str:
    """Accept the five-field cron language every scheduler agrees on (numbers, names, ``*``, ranges, lists,
    steps) and the ``@daily``-style macros; reject the rest (seconds fields, ``L``, ``#``, ``H``), which some
    schedulers read differently or not at all. Returns the expression normalised to single spaces."""
    text = " ".join(expr.split())
    if text.lower() in _MACROS:
        return text.lower()
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    for part, (what, low, high, names) in zip(parts, _FIELDS, strict=True):
        for item in part.split(","):
            match = _ITEM.match(item)
            if match is None:
                raise CronError(f"{what}: cannot read {item!r}")
            if match["step"] is not None and int(match["step"]) == 0:
                raise CronError(f"{what}: a step of 0 in {item!r}")
            if match["star"]:
                continue
            first = _value(match["lo"], low, high, names, what)
            if match["hi"] is not None and _value(match["hi"], low, high, names, what) < first:
                raise CronError(f"{what}: the range {item!r} runs backwards")
    return text


def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise CronError(f"unknown time zone {name!r} (an IANA name such as UTC or Europe/Paris)") from err
    return name


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment, independent of how it is run (served or on a work pool)."""

    flow: str
    name: str
    parameters: dict[str, Any]
    cron: str
    timezone: str
    tags: tuple[str, ...]
    description: str
    # One run at a time per deployment; a run that comes due while one is running waits (ENQUEUE) rather
    # than overlapping it. Remote sources also hold their source slot (flows.limits) across deployments.
    concurrency_limit: int = 1
    job_variables: dict[str, Any] = field(default_factory=dict)

    @property
    def entrypoint(self) -> str:
        return _ENTRYPOINTS[self.flow][0]

    @property
    def module_entrypoint(self) -> str:
        return _ENTRYPOINTS[self.flow][1]

    @property
    def full_name(self) -> str:
        """How Prefect names it: ``flow/deployment``."""
        return f"{self.flow}/{self.name}"


def _checked(settings: RaglineSettings, where: str, cron: str, timezone: str) -> tuple[str, str]:
    try:
        return validate_cron(cron), validate_timezone(timezone)
    except CronError as err:
        origin = f"config file {settings.config_path}" if settings.config_path else "settings"
        raise ConfigError(f"{origin}: {where}: invalid schedule {cron!r} ({timezone}): {err}") from err


def deployment_specs(settings: RaglineSettings) -> list[DeploymentSpec]:
    """The deployments the settings describe, validated; an empty list when nothing is scheduled."""
    specs: list[DeploymentSpec] = []
    zone = settings.deployments.timezone
    for i, source in enumerate(settings.sources):
        if source.schedule is None:
            continue
        where = f"sources[{i}] ({source.name}).schedule"
        if not _NAME.match(source.name) or "/" in source.name or "%" in source.name:
            raise ConfigError(f"{where}: the source name {source.name!r} cannot name a Prefect deployment")
        cron, tz = _checked(settings, where, source.schedule, zone)
        specs.append(
            DeploymentSpec(
                flow=SOURCE_FLOW,
                name=source.name,
                parameters={"source": source.name},
                cron=cron,
                timezone=tz,
                tags=("ragline", f"source:{source.name}", f"kind:{source.kind}"),
                description=f"Scheduled ingestion of the {source.kind} source {source.name!r}.",
            )
        )
    snap = settings.snapshots
    if snap is not None:
        cron, tz = _checked(settings, "snapshots.cron", snap.cron, snap.timezone or zone)
        specs.append(
            DeploymentSpec(
                flow=SNAPSHOT_FLOW,
                name=SNAPSHOT_DEPLOYMENT,
                parameters={
                    "dest_root": snap.destination,
                    "keep_last": snap.keep_last,
                    "older_than_days": snap.older_than_days,
                },
                cron=cron,
                timezone=tz,
                tags=("ragline", "snapshot"),
                description="Scheduled snapshot of the store, verified, then pruned by retention.",
            )
        )
    reembed = settings.reembed
    if reembed is not None:
        cron, tz = _checked(settings, "reembed.cron", reembed.cron, reembed.timezone or zone)
        specs.append(
            DeploymentSpec(
                flow=REEMBED_FLOW,
                name=REEMBED_DEPLOYMENT,
                parameters={"batch_documents": reembed.batch_documents},
                cron=cron,
                timezone=tz,
                tags=("ragline", "reembed"),
                description="Re-embeds into the configured model's generation, then switches search to it.",
            )
        )
    return specs


def project_file(settings: RaglineSettings, specs: list[DeploymentSpec], prefect_version: str) -> dict[str, Any]:
    """The Prefect 3 project file (``prefect.yaml``) for these deployments on the configured work pool."""
    pool: dict[str, Any] = {"name": settings.deployments.work_pool}
    if settings.deployments.work_queue:
        pool["work_queue_name"] = settings.deployments.work_queue
    deployments: list[dict[str, Any]] = []
    for spec in specs:
        deployments.append(
            {
                "name": spec.name,
                "description": spec.description,
                "entrypoint": spec.entrypoint,
                "parameters": spec.parameters,
                "tags": list(spec.tags),
                "schedules": [{"cron": spec.cron, "timezone": spec.timezone, "active": True}],
                "concurrency_limit": {"limit": spec.concurrency_limit, "collision_strategy": "ENQUEUE"},
                "work_pool": {**pool, "job_variables": dict(spec.job_variables)},
            }
        )
    return {
        "name": "ragline",
        "prefect-version": prefect_version,
        "build": None,
        "push": None,
        "pull": [
            {"prefect.deployments.steps.set_working_directory": {"directory": settings.deployments.working_directory}}
        ],
        "deployments": deployments,
    }


def render_prefect_yaml(settings: RaglineSettings, prefect_version: str | None = None) -> str:
    """``deploy/prefect.yaml`` as text, with a header saying where it came from."""
    if prefect_version is None:
        from importlib.metadata import version

        prefect_version = version("prefect")
    specs = deployment_specs(settings)
    origin = "the built-in defaults"
    if settings.config_path is not None:
        path = settings.config_path
        origin = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    header = (
        f"# Rendered by `ragline deploy render` from {origin}: edit the config and render again.\n"
        f"# Apply with `prefect deploy --all` (work pool {settings.deployments.work_pool!r} must exist);\n"
        "# `ragline serve` serves the same deployments without a work pool.\n"
    )
    body = yaml.safe_dump(project_file(settings, specs, prefect_version), sort_keys=False, width=120)
    return header + body


def runner_deployments(specs: list[DeploymentSpec]) -> list[tuple[RunnerDeployment, Flow[Any, Any]]]:
    """Prefect deployments for ``ragline serve``, each with the flow it runs (``flows.scheduled`` runs them in
    the serve process). Prefect must be configured (flows.prefect_server)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.ingest import ingest_source
    from flows.reembed_flow import reembed_store
    from flows.snapshot import snapshot_store

    flows: dict[str, Any] = {SOURCE_FLOW: ingest_source, SNAPSHOT_FLOW: snapshot_store, REEMBED_FLOW: reembed_store}
    built = []
    for spec in specs:
        deployment: RunnerDeployment = flows[spec.flow].to_deployment(
            name=spec.name,
            schedule=Cron(spec.cron, timezone=spec.timezone),
            parameters=spec.parameters,
            tags=list(spec.tags),
            description=spec.description,
            concurrency_limit=ConcurrencyLimitConfig(
                limit=spec.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        built.append((deployment, flows[spec.flow]))
    return built
