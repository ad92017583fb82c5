"""Metrics of runs outside ``ragline serve`` pushed to a Prometheus Pushgateway (W2 5/5; filled in by the
Pushgateway work)."""

from __future__ import annotations

from typing import Any


def after_run(settings: Any, source: str) -> None:
    """Push the process's metrics once a run of ``source`` has ended, when ``metrics.pushgateway`` is set."""
