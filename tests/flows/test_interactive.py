"""Flows a command waits for send no heartbeats (``flows.ingest.interactive``): Prefect's heartbeat thread is
joined at the flow's end, up to a second of every ``ragline ingest``; an operator's own frequency is kept."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.settings import get_current_settings, temporary_settings

from flows.ingest import interactive


@flow
def _heartbeat_frequency() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


def test_a_commands_flow_sends_no_heartbeats_unless_the_operator_asks(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    assert _heartbeat_frequency() == 180  # Prefect's default, for runs of deployments
    with interactive():
        assert _heartbeat_frequency() is None
    # The operator's frequency (from the environment at the process's start, or a profile) is kept.
    with temporary_settings(updates={"flows.heartbeat_frequency": 60}), interactive():
        assert _heartbeat_frequency() == 60
