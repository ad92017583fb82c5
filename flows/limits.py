"""Prefect global concurrency limits for sources: one sync of a source at a time across every process and
machine (two would replay each other's pages and race on the cursor), and an optional request rate shared by
all runs and sources that call one API account (``http.shared_quota``), which a per-process token bucket
cannot see."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from connectors.http import HttpPolicy

PREFIX = "ragline"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def source_limit_name(source: str) -> str:
    return f"{PREFIX}-source-{_safe(source)}"


def quota_limit_name(quota: str) -> str:
    return f"{PREFIX}-quota-{_safe(quota)}"


def ensure_limits(source: str, policy: HttpPolicy | None) -> None:
    """Create (or bring up to date) the limits this source's runs take. Idempotent; cheap."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(source_limit_name(source), 1)
        if policy is not None and policy.shared_quota:
            if policy.rate_per_second is None:
                raise ValueError(f"source {source!r}: http.shared_quota needs http.rate_per_second")
            client.upsert_global_concurrency_limit_by_name(
                quota_limit_name(policy.shared_quota), policy.burst, slot_decay_per_second=policy.rate_per_second
            )


@contextmanager
def source_slot(source: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the source's single slot for the length of a sync; a second run waits for the first."""
    from prefect.concurrency.sync import concurrency

    with concurrency(source_limit_name(source), occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield


def quota_gate(policy: HttpPolicy) -> Callable[[], None] | None:
    """A per-request gate taking one slot of the shared rate limit, or None when the source shares none."""
    if not policy.shared_quota:
        return None
    from prefect.concurrency.sync import rate_limit

    name = quota_limit_name(policy.shared_quota)

    def gate() -> None:
        rate_limit(name, occupy=1, strict=True)

    return gate
