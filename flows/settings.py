"""ragline's settings: one pydantic model, loaded once at the edge from the config file and environment.

Precedence: built-in defaults < YAML config file (``RAGLINE_CONFIG``, else ``RAGLINE_HOME/config.yaml``) <
environment (``RAGLINE_DATABASE_URL``, ``RAGLINE_PDF_PASSWORDS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors.pdf import PdfSettings
from connectors.registry import SourceSettings
from embedding.model import EmbeddingSettings
from vectorstore.settings import DatabaseSettings, SearchSettings


class ConfigError(ValueError):
    """A bad setting: the message names the file and the field."""


class PrefectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["local", "ephemeral"] = Field(
        default="local",
        description="local: one Prefect server under RAGLINE_HOME, started once and reused (it serves the UI); "
        "ephemeral: Prefect's per-process server (7-15 s per command). PREFECT_API_URL overrides both.",
    )
    port: int | None = Field(default=None, ge=1024, le=65535, description="Port of the local server.")
    startup_timeout: float = Field(default=90.0, gt=0, description="Seconds to wait for the local server.")


class ServeSettings(BaseModel):
    """The on-demand trigger endpoint of ``ragline serve`` and its warm workers."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the trigger endpoint listens on.")
    port: int = Field(default=8765, ge=0, le=65535, description="Its port; 0 picks a free one (see serve.json).")
    workers: int = Field(default=1, ge=1, le=32, description="Warm worker threads, each with its own DB connection.")
    queue_size: int = Field(
        default=32, ge=1, description="Runs accepted but not started; beyond it requests get 429 (load shedding)."
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    read_timeout: float = Field(default=30.0, gt=0, description="Seconds to receive a request before a 408.")
    queue_timeout: float = Field(
        default=300.0, gt=0, description="A run not started within this many seconds fails as expired."
    )
    download_timeout: float = Field(default=60.0, gt=0, description="Seconds to fetch a URL posted for ingestion.")
    dedupe_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="An identical request within this window after its run finished gets that run back "
        "(queued and running ones always do; failed ones never).",
    )
    history: int = Field(default=1000, ge=1, description="Finished run records kept in memory for the status call.")
    ready_timeout: float = Field(default=600.0, gt=0, description="Seconds the model may take to load at start.")
    inbox_source: str = Field(default="inbox", min_length=1, description="Source of posted files and URLs.")
    token_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding a bearer token the endpoint requires (never logged).",
    )
    scheduled_runs: int = Field(
        default=2, ge=1, description="Scheduled flow runs `ragline serve` runs at once (each in its own process)."
    )
    poll_seconds: float = Field(default=10.0, gt=0, description="How often the runner asks Prefect for due runs.")


class SnapshotScheduleSettings(BaseModel):
    """A scheduled ``snapshot-store`` deployment."""

    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=1, description="Root directory or fsspec URL the snapshots go under.")
    cron: str = Field(min_length=1, description="Cron schedule of the snapshots.")
    timezone: str | None = Field(default=None, description="IANA time zone of the cron; default deployments.timezone.")
    keep_last: int | None = Field(default=7, ge=1, description="Snapshots always kept (the newest).")
    older_than_days: float | None = Field(default=None, gt=0, description="Older snapshots beyond keep_last go.")


class DeploymentSettings(BaseModel):
    """How deployments are rendered into ``deploy/prefect.yaml`` for workers (``ragline serve`` needs none)."""

    model_config = ConfigDict(extra="forbid")

    work_pool: str = Field(default="ragline", min_length=1, description="Work pool the deployments run on.")
    work_queue: str | None = Field(default=None, description="Work queue in that pool (default: the pool's).")
    timezone: str = Field(default="UTC", description="IANA time zone of source crons.")
    working_directory: str = Field(
        default="/app", description="Directory holding the ragline code on the workers (the pull step)."
    )


class ReembedScheduleSettings(BaseModel):
    """A scheduled ``reembed-store`` deployment: after `embedding.model` changes, it re-embeds the store into
    the new model's generation in the background and switches search to it (a no-op run otherwise)."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(default="*/15 * * * *", min_length=1, description="Cron schedule of the re-embed checks.")
    timezone: str | None = Field(default=None, description="IANA time zone of the cron; default deployments.timezone.")
    batch_documents: int = Field(default=32, ge=1, le=10_000, description="Documents re-embedded per transaction.")


class RaglineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: Path
    config_path: Path | None = None
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    pdf: PdfSettings = Field(default_factory=PdfSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    batch_chunks: int = Field(
        default=256, gt=0, description="Chunks embedded together across documents before they are committed."
    )
    sources: list[SourceSettings] = Field(default_factory=list, description="Named sources for `ingest source`.")
    serve: ServeSettings = Field(default_factory=ServeSettings)
    snapshots: SnapshotScheduleSettings | None = Field(default=None, description="Scheduled snapshots, if any.")
    reembed: ReembedScheduleSettings | None = Field(
        default=None, description="Scheduled background re-embedding into a newly configured model, if any."
    )
    deployments: DeploymentSettings = Field(default_factory=DeploymentSettings)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceSettings]) -> list[SourceSettings]:
        names = [s.name for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique: {', '.join(duplicates)}")
        return sources

    def source(self, name: str) -> SourceSettings:
        for candidate in self.sources:
            if candidate.name == name:
                return candidate
        known = ", ".join(s.name for s in self.sources) or "none configured"
        where = f" in {self.config_path}" if self.config_path else " (no config file: set RAGLINE_CONFIG)"
        raise ConfigError(f"no source named {name!r}{where}; known: {known}")


def default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("ragline", appauthor=False))


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def load_settings(env: Mapping[str, str] | None = None) -> RaglineSettings:
    env = os.environ if env is None else env
    home = Path(env.get("RAGLINE_HOME") or default_home()).expanduser().absolute()
    config_path: Path | None = None
    data: dict[str, Any] = {}
    if env.get("RAGLINE_CONFIG"):
        config_path = Path(env["RAGLINE_CONFIG"]).expanduser().absolute()
        if not config_path.is_file():
            raise ConfigError(f"RAGLINE_CONFIG points to {config_path}, which is not a file")
    elif (home / "config.yaml").is_file():
        config_path = home / "config.yaml"
    if config_path is not None:
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {config_path} is not valid YAML: {err}") from err
        except OSError as err:
            raise ConfigError(f"cannot read config file {config_path}: {err.strerror}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_path}: the top level must be a mapping")
        data = loaded
    data = {**data, "home": home, "config_path": config_path}
    if env.get("RAGLINE_DATABASE_URL"):
        data["database"] = {**(data.get("database") or {}), "url": env["RAGLINE_DATABASE_URL"]}
    if env.get("RAGLINE_PDF_PASSWORDS"):
        pdf = dict(data.get("pdf") or {})
        pdf["passwords"] = list(pdf.get("passwords") or []) + env["RAGLINE_PDF_PASSWORDS"].splitlines()
        data["pdf"] = pdf
    try:
        return RaglineSettings.model_validate(data)
    except ValidationError as err:
        origin = f"config file {config_path}" if config_path else "settings"
        raise ConfigError(f"{origin}: {_format_errors(err)}") from err


def database_url(settings: RaglineSettings) -> str:
    """The configured server, or the embedded one under RAGLINE_HOME (started on first use)."""
    url: SecretStr | None = settings.database.url
    if url is not None:
        return url.get_secret_value()
    from vectorstore.embedded import embedded_url

    return embedded_url(settings.home)
