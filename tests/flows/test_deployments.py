"""Deployments from settings: cron validation at the edge, the specs, the rendered prefect.yaml (checked with
Prefect's own project-file model), the committed deploy/prefect.yaml kept in step with its example config, and
the runner deployments `ragline serve` registers."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.deployments import (
    SNAPSHOT_FLOW,
    SOURCE_FLOW,
    CronError,
    deployment_specs,
    render_prefect_yaml,
    runner_deployments,
    validate_cron,
    validate_timezone,
)
from flows.settings import ConfigError, RaglineSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]

GOOD_CRONS = [
    ("* * * * *", "* * * * *"),
    ("0  2 * * *", "0 2 * * *"),
    ("*/15 9-17 * * mon-fri", "*/15 9-17 * * mon-fri"),
    ("0 0 1,15 JAN,jul *", "0 0 1,15 JAN,jul *"),
    ("5 4 * * 7", "5 4 * * 7"),
    ("0-30/10 * * * *", "0-30/10 * * * *"),
    ("@daily", "@daily"),
    ("@Hourly", "@hourly"),
]

BAD_CRONS = [
    ("* * * *", "expected 5 fields"),
    ("* * * * * *", "expected 5 fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* 24 * * *", "hour: 24 is outside 0-23"),
    ("* * 0 * *", "day of month: 0 is outside 1-31"),
    ("* * * 13 *", "month: 13 is outside 1-12"),
    ("* * * * 8", "day of week: 8 is outside 0-7"),
    ("*/0 * * * *", "a step of 0"),
    ("30-10 * * * *", "runs backwards"),
    ("* * * foo *", "'foo' is not a number or a name"),
    ("H * * * *", "'H' is not a number"),
    ("0 0 L * *", "'L' is not a number"),
    ("0 0 * * 1#2", "cannot read '1#2'"),
    ("@reboot", "expected 5 fields"),
]


@pytest.mark.parametrize(("cron", "normalised"), GOOD_CRONS)
def test_accepted_crons_are_accepted_by_prefect_too(cron: str, normalised: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    assert validate_cron(cron) == normalised
    CronSchedule(cron=normalised, timezone="UTC")


@pytest.mark.parametrize(("cron", "fragment"), BAD_CRONS)
def test_rejected_crons_say_why(cron: str, fragment: str) -> None:
    with pytest.raises(CronError) as info:
        validate_cron(cron)
    assert fragment in str(info.value)


def test_time_zones() -> None:
    assert validate_timezone("Europe/Paris") == "Europe/Paris"
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        validate_timezone("Mars/Olympus")


def settings_from(tmp_path: Path, text: str) -> RaglineSettings:
    config = tmp_path / "ragline.yaml"
    config.write_text(text)
    return load_settings({"RAGLINE_HOME": str(tmp_path / "home"), "RAGLINE_CONFIG": str(config)})


CONFIG = """
sources:
  - {kind: pdf, name: manuals, paths: [/srv/manuals], schedule: "0 * * * *"}
  - {kind: pdf, name: adhoc, paths: [/srv/adhoc]}
  - {kind: mediawiki, name: wiki, base_url: "https://wiki.example.org/w/api.php", schedule: "*/30  * * * *"}
snapshots: {destination: /backups/ragline, cron: "30 2 * * *", timezone: Europe/Paris, keep_last: 3}
reembed: {cron: "*/10 * * * *", batch_documents: 8}
deployments: {work_pool: gpu-pool, work_queue: nightly, timezone: America/New_York, working_directory: /app}
"""


def test_specs_one_per_scheduled_source_and_the_snapshot(tmp_path: Path) -> None:
    specs = deployment_specs(settings_from(tmp_path, CONFIG))
    assert [s.full_name for s in specs] == [
        "ingest-source/manuals",
        "ingest-source/wiki",
        "snapshot-store/scheduled",
        "reembed-store/background",
    ]
    manuals, wiki, snap, reembed = specs
    assert reembed.parameters == {"batch_documents": 8} and reembed.timezone == "America/New_York"
    assert manuals.parameters == {"source": "manuals"} and manuals.cron == "0 * * * *"
    assert manuals.tags == ("ragline", "source:manuals", "kind:pdf")
    assert wiki.tags == ("ragline", "source:wiki", "kind:mediawiki") and wiki.cron == "*/30 * * * *"
    assert manuals.timezone == wiki.timezone == "America/New_York"
    assert snap.parameters == {"dest_root": "/backups/ragline", "keep_last": 3, "older_than_days": None}
    assert (snap.cron, snap.timezone) == ("30 2 * * *", "Europe/Paris")
    assert all(s.concurrency_limit == 1 for s in specs)
    assert deployment_specs(settings_from(tmp_path, "sources: []\n")) == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "sources:\n  - {kind: pdf, name: a, paths: [/x]}\n"
            '  - {kind: pdf, name: b, paths: [/y], schedule: "61 * * * *"}\n',
            "sources[1] (b).schedule: invalid schedule '61 * * * *' (UTC): minute: 61 is outside 0-59",
        ),
        (
            'snapshots: {destination: /s, cron: "0 3 * * *", timezone: Nowhere/City}\n',
            "snapshots.cron: invalid schedule '0 3 * * *' (Nowhere/City): unknown time zone",
        ),
        (
            'sources:\n  - {kind: pdf, name: "a/b", paths: [/x], schedule: "@daily"}\n',
            "cannot name a Prefect deployment",
        ),
    ],
)
def test_bad_schedules_name_the_config_entry(tmp_path: Path, text: str, fragment: str) -> None:
    settings = settings_from(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        deployment_specs(settings)
    assert fragment in str(info.value)


def test_rendered_project_file_is_valid_for_prefect(tmp_path: Path) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    text = render_prefect_yaml(settings_from(tmp_path, CONFIG), prefect_version="3.8.8")
    assert text.startswith("# Rendered by `ragline deploy render`")
    data = yaml.safe_load(text)
    model = PrefectYamlModel.model_validate(data)
    assert [d.name for d in model.deployments] == ["manuals", "wiki", "scheduled", "background"]
    manuals = data["deployments"][0]
    assert manuals["entrypoint"] == "flows/ingest.py:ingest_source"
    assert manuals["work_pool"] == {"name": "gpu-pool", "work_queue_name": "nightly", "job_variables": {}}
    assert manuals["schedules"] == [{"cron": "0 * * * *", "timezone": "America/New_York", "active": True}]
    assert manuals["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert data["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    # Every entrypoint names a real flow of that name, relative to the code directory.
    for deployment, spec in zip(data["deployments"], deployment_specs(settings_from(tmp_path, CONFIG)), strict=True):
        path, func = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file()
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, func).name == spec.flow


def test_committed_prefect_yaml_matches_the_example_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    committed = (ROOT / "deploy" / "prefect.yaml").read_text()
    version = yaml.safe_load(committed)["prefect-version"]
    settings = load_settings({"RAGLINE_HOME": "/nonexistent", "RAGLINE_CONFIG": str(ROOT / "examples/ragline.yaml")})
    assert render_prefect_yaml(settings, prefect_version=version) == committed, (
        "deploy/prefect.yaml is stale: run `RAGLINE_CONFIG=examples/ragline.yaml ragline deploy render "
        "-o deploy/prefect.yaml`"
    )


def test_runner_deployments_carry_schedule_limits_and_module_entrypoints(tmp_path: Path) -> None:
    specs = deployment_specs(settings_from(tmp_path, CONFIG))
    pairs = runner_deployments(specs)
    built = [d for d, _ in pairs]
    assert [f.name for _, f in pairs] == [d.flow_name for d in built]  # each served with the flow it runs
    assert [d.name for d in built] == ["manuals", "wiki", "scheduled", "background"]
    assert [d.flow_name for d in built] == [SOURCE_FLOW, SOURCE_FLOW, SNAPSHOT_FLOW, "reembed-store"]
    assert built[3].entrypoint == "flows.reembed_flow.reembed_store"
    assert built[0].entrypoint == "flows.ingest.ingest_source"
    assert built[2].entrypoint == "flows.snapshot.snapshot_store"
    assert built[0].schedules
    schedule = built[0].schedules[0].schedule
    assert (getattr(schedule, "cron", None), getattr(schedule, "timezone", None)) == ("0 * * * *", "America/New_York")
    assert built[0].parameters == {"source": "manuals"} and set(built[0].tags) == set(specs[0].tags)
    assert built[0].concurrency_limit == 1
    assert built[0].concurrency_options is not None
    assert built[0].concurrency_options.collision_strategy.value == "ENQUEUE"


def test_deploy_render_command(tmp_path: Path) -> None:
    config = tmp_path / "ragline.yaml"
    config.write_text(CONFIG)
    env = {"RAGLINE_HOME": str(tmp_path / "home"), "RAGLINE_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "out" / "prefect.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "ragline", "deploy", "render", "-o", str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert len(yaml.safe_load(out.read_text())["deployments"]) == 4

    config.write_text('sources:\n  - {kind: pdf, name: m, paths: [/x], schedule: "0 25 * * *"}\n')
    bad = subprocess.run([sys.executable, "-m", "ragline", "deploy", "render"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "sources[0] (m).schedule" in bad.stderr and "hour: 25 is outside 0-23" in bad.stderr
