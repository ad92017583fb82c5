"""Syncing a remote connector in tests the way a run does, without the Prefect slot: the source resolved in
the ledger by name, then ``flows.sources.sync_remote``."""

from __future__ import annotations

from typing import Any

from connectors.base import RemoteSource
from flows.counts import Counts
from flows.planning import resolve_source
from flows.runtime import Services
from flows.sources import sync_remote


def sync(svc: Services, name: str, connector: RemoteSource, **options: Any) -> Counts:
    source = resolve_source(svc.pipeline.conn, svc.settings, name, connector.kind)
    return sync_remote(svc.pipeline, source, connector, **options)
