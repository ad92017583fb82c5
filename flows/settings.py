"""ragline's settings: one pydantic-settings model, loaded once at the edge from the config file and environment.

Precedence: built-in defaults < YAML config file (``RAGLINE_CONFIG``, else ``RAGLINE_HOME/config.yaml``) <
environment. Every setting can be set in the environment as ``RAGLINE_`` + its path in upper case, nested
levels joined by ``__``: ``RAGLINE_DATABASE__WRITERS=0``, ``RAGLINE_EMBEDDING__CHUNKING__CHUNK_TOKENS=128``,
``RAGLINE_SEARCH__MODE=vector``; lists and whole sections take JSON (``RAGLINE_SOURCES='[...]'``). Two older
variables keep their meaning: ``RAGLINE_DATABASE_URL`` is ``database.url``, and ``RAGLINE_PDF_PASSWORDS``
(one password a line) is appended to ``pdf.passwords``. A ``RAGLINE_`` variable that is neither a setting nor
one of ragline's own (``RAGLINE_HOME``, ``RAGLINE_CONFIG``, ``RAGLINE_DEBUG``, ...) or named by a ``*_env``
setting is refused, so that a misspelt override does not pass unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from connectors.base import DeleteGuard
from connectors.pdf_settings import PdfSettings
from connectors.registry import SourceSettings
from embedding.canary import Tolerance
from embedding.model import EmbeddingSettings
from flows.sandbox import ParseSettings
from flows.serve_state import resolve_home
from vectorstore.settings import DatabaseSettings, SearchSettings

ENV_PREFIX = "RAGLINE_"

# ragline's variables that are not settings, and those docker compose reads (deploy/compose.yaml).
OWN_VARIABLES = frozenset(
    {
        "RAGLINE_HOME",
        "RAGLINE_CONFIG",
        "RAGLINE_DATABASE_URL",
        "RAGLINE_PDF_PASSWORDS",
        "RAGLINE_DEBUG",
        "RAGLINE_SERVE_URL",
        "RAGLINE_IMAGE",
        "RAGLINE_CUDA_IMAGE",
        "RAGLINE_PDFS",
    }
)


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


class TenantToken(BaseModel):
    """A bearer token that acts for one tenant only: it searches that tenant's chunks (under row-level security
    when ``database.row_level_security`` is on) and ingests only into that tenant's sources."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The tenant the token acts for.")
    token_env: str = Field(min_length=1, description="Environment variable holding the token (never logged).")


class ServeSettings(BaseModel):
    """The warm service of ``ragline serve``: its API (triggers, search, operations) and its workers."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        description="Address the service listens on. A non-loopback address needs a token (serve.token_env or "
        "serve.tenant_tokens) unless serve.allow_anonymous is set.",
    )
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
        description="Name of an environment variable holding the operator's bearer token (every route, every "
        "tenant; never logged). With it or tenant tokens set, every route but the probes needs a token.",
    )
    tenant_tokens: list[TenantToken] = Field(
        default_factory=list, description="Tokens that act for one tenant each (search and ingest its own rows)."
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Serve a non-loopback address without any token (a warning at every start). Off: refused.",
    )
    url_allow: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) and host names URL triggers may fetch from although they are internal "
        "(loopback, private, link-local, unique-local): everything internal is refused unless listed here.",
    )
    max_redirects: int = Field(default=5, ge=0, le=20, description="Redirects a URL trigger follows (each checked).")
    inbox_retention: float = Field(
        default=7 * 86400.0,
        ge=0,
        description="Seconds a posted file whose run failed or quarantined it stays in the inbox (for a retry); "
        "a file whose run committed it is removed at once.",
    )
    max_connections: int = Field(
        default=256, ge=1, description="Requests in progress at once; beyond it 503 (load shedding)."
    )
    search_concurrency: int = Field(default=4, ge=1, le=256, description="Searches answered at once.")
    search_queue: int = Field(
        default=64, ge=0, description="Searches waiting for a slot; beyond it they get 429 (load shedding)."
    )
    drain_seconds: float = Field(
        default=60.0, ge=0, description="On SIGTERM: seconds running runs may take to finish before the stop."
    )
    scheduled_runs: int = Field(
        default=2, ge=1, description="Scheduled flow runs `ragline serve` runs at once (in its process, warm)."
    )
    poll_seconds: float = Field(default=10.0, gt=0, description="How often the service asks Prefect for due runs.")


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


class MetricsSettings(BaseModel):
    """Prometheus metrics. ``ragline serve`` serves them at ``/metrics``; runs outside it (the CLI, Prefect
    workers) push theirs to a Pushgateway when one is set. Either way each run's figures stay in ``runs``."""

    model_config = ConfigDict(extra="forbid")

    pushgateway: SecretStr | None = Field(
        default=None,
        description="URL of a Prometheus Pushgateway (http or https; user:password@ for Basic auth, never "
        "logged) that runs outside `ragline serve` push to when they end (job ragline, grouped by instance and "
        "source).",
    )
    push_timeout: float = Field(
        default=3.0, gt=0, le=60, description="Seconds a push may take; a slow or dead gateway never holds a run."
    )
    instance: str | None = Field(
        default=None,
        min_length=1,
        description="The instance label of pushed metrics (default: the host name). Set a stable name where "
        "every run gets a new host (Kubernetes job pods), or the gateway keeps a group per pod.",
    )

    @field_validator("pushgateway")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value.get_secret_value())
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as err:
            raise ValueError(f"not a URL ({err})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://pushgateway:9091")
        if parts.query or parts.fragment:
            raise ValueError("takes no query or fragment (pushes go to <url>/metrics/job/...)")
        return value


class DriftSettings(BaseModel):
    """Embedding drift baselines per source, and the model canary (``embedding.drift``, ``flows.drift``,
    ``flows.canary``). The defaults were set on real PDFs (docs/benchmarks.md): more pages of the same manual
    scored ~0.2-0.3 against its baseline, another paper of the same field ~1.4, recipes ~2."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Measure each run's drift against its source's baseline.")
    threshold: float = Field(
        default=0.6,
        gt=0,
        description="Drift score over which a run raises an alert (score: centroid shift in units of the "
        "baseline's spread + KS statistic of the cosines to the baseline's centroid + 0.25 x KS statistic of the "
        "chunk token lengths).",
    )
    alpha: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="An alert also needs the cosine test significant at this level: a small, noisy run never "
        "raises one on its score alone.",
    )
    min_chunks: int = Field(
        default=20, ge=2, description="Chunks a run must have committed for a drift score; fewer: 'insufficient'."
    )
    baseline_min_chunks: int = Field(
        default=50,
        ge=2,
        description="Chunks a source must hold before its baseline is anchored (small first runs accumulate: the "
        "baseline is taken from the source's stored chunks once there are this many).",
    )
    sample: int = Field(
        default=5000,
        ge=10,
        description="Most chunks read back for a baseline or a run's drift (a deterministic sample by chunk id).",
    )
    canary: bool = Field(
        default=True, description="Check the model canary when a process's embedding pool first embeds."
    )
    canary_min_cosine: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Lowest cosine of any canary text to its stored vector (int8 gave 0.978 on its worst text "
        "against float32, bfloat16 0.9999); below it, writes into the generation stop.",
    )
    canary_min_mean: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="Lowest mean cosine of the canary texts to their stored vectors (the int8 gates' bar: int8 "
        "gave 0.995 against float32); below it, writes into the generation stop.",
    )

    @property
    def canary_tolerance(self) -> Tolerance:
        return Tolerance(self.canary_min_cosine, self.canary_min_mean)


class RaglineSettings(BaseSettings):
    """Built by ``load_settings``, which gives it its sources; constructed directly it reads nothing."""

    model_config = SettingsConfigDict(
        extra="forbid",
        validate_default=False,  # as the plain model it was: defaults are not validated again at each load
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=True,  # an empty variable is unset, as RAGLINE_HOME= and RAGLINE_CONFIG= always were
    )

    home: Path
    config_path: Path | None = None
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    pdf: PdfSettings = Field(default_factory=PdfSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    parsing: ParseSettings = Field(
        default_factory=ParseSettings, description="Where documents are parsed, and the limits on one document."
    )
    batch_chunks: int = Field(
        default=256, gt=0, description="Chunks embedded together across documents before they are committed."
    )
    sources: list[SourceSettings] = Field(default_factory=list, description="Named sources for `ingest source`.")
    deletes: DeleteGuard = Field(
        default_factory=DeleteGuard,
        description="Mass-delete guard of sources that set none, and of `ragline ingest pdf` runs of unconfigured "
        "source names.",
    )
    serve: ServeSettings = Field(default_factory=ServeSettings)
    snapshots: SnapshotScheduleSettings | None = Field(default=None, description="Scheduled snapshots, if any.")
    reembed: ReembedScheduleSettings | None = Field(
        default=None, description="Scheduled background re-embedding into a newly configured model, if any."
    )
    deployments: DeploymentSettings = Field(default_factory=DeploymentSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class ConfigFile(PydanticBaseSettingsSource):
    """The YAML config file as a settings source: its mapping as written (unknown keys are left to validation,
    which refuses them with their path)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.data = {} if path is None else _read_yaml(path)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)

    def value(self, *path: str) -> Any:
        """The value at ``path`` (``pdf``, ``passwords``), None where the file has none."""
        node: Any = self.data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return loaded


class Environment(EnvSettingsSource):
    """pydantic-settings' environment source (``RAGLINE_`` prefix, ``__`` between levels) over the given
    mapping rather than ``os.environ``, plus ``RAGLINE_DATABASE_URL`` and ``RAGLINE_PDF_PASSWORDS``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], below: ConfigFile) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        self._below = below
        self._undecodable = f"{ENV_PREFIX}*: not valid JSON"
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    def variable(self, *path: str | int) -> str | None:
        """The variable that sets ``path`` (or the section holding it), as spelt in the environment."""
        names = {name.upper(): name for name in self._environ if self._environ[name]}
        if path[:2] == ("database", "url") and "RAGLINE_DATABASE_URL" in names:
            return names["RAGLINE_DATABASE_URL"]
        if path[:2] == ("pdf", "passwords") and "RAGLINE_PDF_PASSWORDS" in names:
            return names["RAGLINE_PDF_PASSWORDS"]
        for depth in range(len(path), 0, -1):
            name = ENV_PREFIX + "__".join(str(p) for p in path[:depth]).upper()
            if name in names:
                return names[name]
        return None

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        except ValueError as err:
            # Some failures are tolerated by the caller (a union may take the plain string); the one that is
            # not ends the loading, so the last one recorded is the one to report.
            names = [n for n, v in self._environ.items() if v == value and n.upper().startswith(ENV_PREFIX)]
            self._undecodable = f"{' or '.join(sorted(names)) or ENV_PREFIX + '*'}: not valid JSON ({err})"
            raise

    def __call__(self) -> dict[str, Any]:
        try:
            data = super().__call__()
        except SettingsError as err:  # a list or section given as JSON that does not parse
            raise ConfigError(f"environment {self._undecodable}") from err
        url = self.env_vars.get("ragline_database_url")
        if url:
            database = data.setdefault("database", {})
            if isinstance(database, dict):
                if database.get("url") not in (None, url):
                    raise ConfigError("environment: RAGLINE_DATABASE_URL and RAGLINE_DATABASE__URL differ; set one")
                database["url"] = url
        passwords = self.env_vars.get("ragline_pdf_passwords")
        if passwords:
            pdf = data.setdefault("pdf", {})
            if isinstance(pdf, dict):
                listed = pdf["passwords"] if "passwords" in pdf else self._below.value("pdf", "passwords")
                # A value that is not a list is kept as it is, for validation to name it.
                if listed is None or isinstance(listed, list):
                    pdf["passwords"] = list(listed or []) + passwords.splitlines()
        return data


def _format_errors(err: ValidationError, env: Environment, config_path: Path | None) -> str:
    """``origin: field: message`` with the origin that set each bad value: a variable, else the file."""
    by_origin: dict[str, list[str]] = {}
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        name = env.variable(*(str(p) for p in e["loc"]))
        origin = f"environment {name}" if name else f"config file {config_path}" if config_path else "settings"
        by_origin.setdefault(origin, []).append(f"{where}: {e['msg']}")
    return "; ".join(f"{origin}: " + "; ".join(parts) for origin, parts in by_origin.items())


def _named_variables(model: BaseModel) -> Iterator[str]:
    """Variables the settings name (``serve.token_env``, a source's ``token_env``): secrets, not settings."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name.endswith("_env") and isinstance(value, str):
            yield value
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                yield from _named_variables(item)


def _refuse_unknown_variables(environ: Mapping[str, str], settings: RaglineSettings) -> None:
    settable = sorted(set(RaglineSettings.model_fields) - {"home", "config_path"})
    allowed = OWN_VARIABLES | {n.upper() for n in _named_variables(settings)}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in allowed or not environ[name]:
            continue
        if upper.removeprefix(ENV_PREFIX).lower().split("__")[0] not in settable:
            raise ConfigError(
                f"environment {name}: not a ragline setting; settings are {ENV_PREFIX}<NAME>, nested with __ "
                f"(e.g. RAGLINE_DATABASE__WRITERS), NAME one of: {', '.join(settable)}"
            )


def load_settings(env: Mapping[str, str] | None = None) -> RaglineSettings:
    """Settings from ``env`` (default ``os.environ``; a given mapping is the only environment read) and the
    config file it names."""
    environ: Mapping[str, str] = os.environ if env is None else env
    home = resolve_home(environ)
    config_path: Path | None = None
    if environ.get("RAGLINE_CONFIG"):
        config_path = Path(environ["RAGLINE_CONFIG"]).expanduser().absolute()
        if not config_path.is_file():
            raise ConfigError(f"RAGLINE_CONFIG points to {config_path}, which is not a file")
    elif (home / "config.yaml").is_file():
        config_path = home / "config.yaml"
    config_file = ConfigFile(RaglineSettings, config_path)
    environment = Environment(RaglineSettings, environ, config_file)
    located = InitSettingsSource(RaglineSettings, {"home": home, "config_path": config_path})
    try:
        # mypy reads the fields' __init__ (no pydantic plugin), not BaseSettings' keyword for given sources.
        settings = RaglineSettings(_build_sources=((located, environment, config_file), {}))  # type: ignore[call-arg]
    except ValidationError as err:
        raise ConfigError(_format_errors(err, environment, config_path)) from err
    _refuse_unknown_variables(environ, settings)
    return settings


def store_is_new(settings: RaglineSettings) -> bool:
    """Whether ragline's store does not exist yet: the embedded server under RAGLINE_HOME not initialised (a
    configured server is never assumed new). Every document of a first run is new to it."""
    from vectorstore.embedded import initialised

    return settings.database.url is None and not initialised(settings.home)


def database_url(settings: RaglineSettings) -> str:
    """The configured server, or the embedded one under RAGLINE_HOME (started on first use)."""
    url: SecretStr | None = settings.database.url
    if url is not None:
        return url.get_secret_value()
    from vectorstore.embedded import embedded_url

    return embedded_url(settings.home)
