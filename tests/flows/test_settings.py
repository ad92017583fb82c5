"""Settings loading (flows.settings.load_settings): defaults < config file < environment, every setting from a
``RAGLINE_`` variable (``__`` between levels), errors that name the variable or file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from flows.settings import ConfigError, RaglineSettings, load_settings


def _at(settings: RaglineSettings, path: str) -> Any:
    """The value at ``path``, None where a section or list item is absent; secrets revealed."""
    value: Any = settings
    for key in path.split("."):
        if isinstance(value, list):
            value = value[int(key)] if int(key) < len(value) else None
        elif value is not None:
            value = getattr(value, key)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
    return value.model_dump() if isinstance(value, BaseModel) else value


def _load(tmp_path: Path, env: dict[str, str], config: str | None = None) -> RaglineSettings:
    full = {"RAGLINE_HOME": str(tmp_path / "home"), **env}
    if config is not None:
        (tmp_path / "ragline.yaml").write_text(config)
        full["RAGLINE_CONFIG"] = str(tmp_path / "ragline.yaml")
    return load_settings(full)


@pytest.mark.parametrize(
    ("env", "config", "path", "expected"),
    [
        # The environment sets nested values.
        ({"RAGLINE_DATABASE__WRITERS": "0"}, None, "database.writers", 0),
        ({"RAGLINE_EMBEDDING__CHUNKING__CHUNK_TOKENS": "96"}, None, "embedding.chunking.chunk_tokens", 96),
        ({"RAGLINE_SEARCH__MODE": "vector"}, None, "search.mode", "vector"),
        ({"RAGLINE_BATCH_CHUNKS": "8"}, None, "batch_chunks", 8),
        ({"ragline_prefect__port": "4300"}, None, "prefect.port", 4300),
        (
            {"RAGLINE_SNAPSHOTS__DESTINATION": "/s", "RAGLINE_SNAPSHOTS__CRON": "0 3 * * *"},
            None,
            "snapshots.cron",
            "0 3 * * *",
        ),
        ({"RAGLINE_SOURCES": '[{"kind": "pdf", "name": "a", "paths": ["/x"]}]'}, None, "sources.0.name", "a"),
        # The environment beats the file; the file beats the defaults; the two merge section by section.
        ({"RAGLINE_SEARCH__EXACT": "never"}, "search: {exact: always, ef_search: 7}\n", "search.exact", "never"),
        ({"RAGLINE_SEARCH__EXACT": "never"}, "search: {exact: always, ef_search: 7}\n", "search.ef_search", 7),
        # The file's bad value is overridden, so never validated.
        ({"RAGLINE_DATABASE__WRITERS": "3"}, "database: {writers: -1}\n", "database.writers", 3),
        ({}, "search: {mode: vector}\n", "search.mode", "vector"),
        ({}, "batch_chunks: 8\n", "batch_chunks", 8),
        # An empty variable is unset.
        ({"RAGLINE_SEARCH__MODE": ""}, "search: {mode: vector}\n", "search.mode", "vector"),
        # The older variables keep their meaning.
        ({"RAGLINE_DATABASE_URL": "postgresql://u@db/x"}, None, "database.url", "postgresql://u@db/x"),
        ({"RAGLINE_DATABASE__URL": "postgresql://u@db/x"}, None, "database.url", "postgresql://u@db/x"),
        ({"RAGLINE_PDF_PASSWORDS": "a\nb"}, "pdf: {passwords: [z]}\n", "pdf.passwords", ["z", "a", "b"]),
        (
            {"RAGLINE_PDF_PASSWORDS": "a", "RAGLINE_PDF__PASSWORDS": '["q"]'},
            "pdf: {passwords: [z]}\n",
            "pdf.passwords",
            ["q", "a"],
        ),
    ],
)
def test_a_value_comes_from_the_highest_source_that_sets_it(
    tmp_path: Path, env: dict[str, str], config: str | None, path: str, expected: Any
) -> None:
    assert _at(_load(tmp_path, {}), path) != expected  # not the default: the source set it
    assert _at(_load(tmp_path, env, config), path) == expected


def test_home_and_its_config_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("batch_chunks: 9\n")
    settings = load_settings({"RAGLINE_HOME": str(home)})
    assert (settings.home, settings.config_path, settings.batch_chunks) == (home, home / "config.yaml", 9)
    (tmp_path / "other.yaml").write_text("batch_chunks: 10\n")
    other = load_settings({"RAGLINE_HOME": str(home), "RAGLINE_CONFIG": str(tmp_path / "other.yaml")})
    assert (other.config_path, other.batch_chunks) == (tmp_path / "other.yaml", 10)


@pytest.mark.parametrize(
    ("env", "config", "message"),
    [
        (
            {"RAGLINE_DATABASE__WRITERS": "-1"},
            None,
            "environment RAGLINE_DATABASE__WRITERS: database.writers: Input should be greater than or equal to 0",
        ),
        (
            {},
            "database: {writers: -1}\n",
            "config file {config}: database.writers: Input should be greater than or equal to 0",
        ),
        (
            {"RAGLINE_SEARCH__MODEE": "vector"},
            None,
            "environment RAGLINE_SEARCH__MODEE: search.modee: Extra inputs are not permitted",
        ),
        ({}, "embeding: {}\n", "config file {config}: embeding: Extra inputs are not permitted"),
        (
            {"RAGLINE_DATABSE__URL": "postgresql://db/x"},
            None,
            "environment RAGLINE_DATABSE__URL: not a ragline setting; settings are RAGLINE_<NAME>, nested with __ "
            "(e.g. RAGLINE_DATABASE__WRITERS), NAME one of: batch_chunks, database, deletes, deployments, drift, "
            "embedding, metrics, parsing, pdf, prefect, reembed, search, serve, snapshots, sources",
        ),
        (
            {"RAGLINE_CONFIG_PATH": "/x.yaml"},
            None,
            "environment RAGLINE_CONFIG_PATH: not a ragline setting",
        ),
        (
            {"RAGLINE_EMBEDDING__CHUNKING": "chunk_tokens=128"},
            None,
            "environment RAGLINE_EMBEDDING__CHUNKING: not valid JSON (",
        ),
        (
            {"RAGLINE_SOURCES": '[{"kind": "pdf", "name": "a", "paths": 3}]'},
            None,
            "environment RAGLINE_SOURCES: sources.0.pdf.paths: Input should be a valid list",
        ),
        ({"RAGLINE_CONFIG": "/nonexistent/ragline.yaml"}, None, "RAGLINE_CONFIG points to /nonexistent/ragline.yaml"),
        ({}, "- a list\n", "config file {config}: the top level must be a mapping"),
    ],
)
def test_errors_name_the_origin_and_the_field(
    tmp_path: Path, env: dict[str, str], config: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, env, config)
    assert str(info.value).startswith(message.format(config=tmp_path / "ragline.yaml"))


def test_secrets_are_not_printed(tmp_path: Path) -> None:
    env = {"RAGLINE_DATABASE_URL": "postgresql://u:hunter2@db/x", "RAGLINE_DATABASE__URL": "postgresql://db/y"}
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, env)
    assert "RAGLINE_DATABASE_URL" in str(info.value) and "hunter2" not in str(info.value)
    settings = _load(tmp_path, {"RAGLINE_DATABASE_URL": "postgresql://u:hunter2@db/x", "RAGLINE_PDF_PASSWORDS": "pw"})
    assert settings.database.url is not None and settings.database.url.get_secret_value().endswith("@db/x")
    assert "hunter2" not in repr(settings) and "'pw'" not in repr(settings)


def test_ragline_variables_that_are_not_settings_are_allowed(tmp_path: Path) -> None:
    env = {
        "RAGLINE_DEBUG": "1",
        "RAGLINE_SERVE_URL": "http://127.0.0.1:8765",
        "RAGLINE_PDFS": "/data/pdfs",
        "RAGLINE_SERVE__TOKEN_ENV": "RAGLINE_TRIGGER_TOKEN",  # named by a setting: a secret, not a setting
        "RAGLINE_TRIGGER_TOKEN": "t0ken",
    }
    assert _load(tmp_path, env).serve.token_env == "RAGLINE_TRIGGER_TOKEN"
    with pytest.raises(ConfigError, match="RAGLINE_TRIGGER_TOKEN: not a ragline setting"):
        _load(tmp_path, {k: v for k, v in env.items() if k != "RAGLINE_SERVE__TOKEN_ENV"})


def test_a_given_mapping_is_the_only_environment_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_HOME", str(tmp_path / "process-home"))
    monkeypatch.setenv("RAGLINE_SEARCH__MODE", "vector")
    monkeypatch.setenv("RAGLINE_DATABASE_URL", "postgresql://process/x")
    from_process = load_settings()
    assert (from_process.home, from_process.search.mode) == (tmp_path / "process-home", "vector")
    assert from_process.database.url is not None

    given = load_settings({"RAGLINE_HOME": str(tmp_path / "given-home")})
    assert (given.home, given.search.mode, given.database.url) == (tmp_path / "given-home", "hybrid", None)

    monkeypatch.setenv("RAGLINE_DATABSE__URL", "postgresql://typo/x")
    with pytest.raises(ConfigError, match="RAGLINE_DATABSE__URL"):
        load_settings()
    assert load_settings({"RAGLINE_HOME": str(tmp_path / "given-home")}).database.url is None
