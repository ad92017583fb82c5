"""Prefect global concurrency limits for sources: one sync of a source at a time across every process and
machine (two would replay each other's pages and race on the cursor), and an optional request rate shared by
all runs and sources that call one API account (``http.shared_quota``), which a per-process token bucket
cannot see.

The source slot uses Prefect's lease calls directly rather than its ``concurrency`` context manager, because
the lease id must be recorded with the run so that a run killed with SIGKILL can have its slot released by the
next run. Release goes through the public client; acquire and renewal are private in Prefect 3.8 and wrapped
in flows.prefect_private."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress

from connectors.http import HttpPolicy

PREFIX = "ragline"
LEASE_SECONDS = 60.0  # the server's minimum; renewed while the sync runs


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
def source_slot(
    source: str, timeout_seconds: float | None = None, stale_leases: Iterable[uuid.UUID] = ()
) -> Iterator[uuid.UUID]:
    """Hold the source's single slot for the length of a sync (a second run waits for the first); yields the
    lease id, which the caller records. ``stale_leases``, held by runs known dead (killed on this host), are
    released first: otherwise a killed run would block its source until the lease expired (60 s at least,
    plus the server's sweep interval)."""
    from flows.prefect_private import acquire_slot_with_lease, renewed_lease

    for lease in stale_leases:
        with suppress(Exception):  # already expired or released: nothing to free
            release_lease(lease)
    lease_id = acquire_slot_with_lease(source_limit_name(source), timeout_seconds, LEASE_SECONDS)
    try:
        with renewed_lease(lease_id, LEASE_SECONDS):
            yield lease_id
    finally:
        release_lease(lease_id)


def release_lease(lease_id: uuid.UUID) -> None:
    """Free the slots held under ``lease_id`` (Prefect's public client call)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def quota_gate(policy: HttpPolicy) -> Callable[[], None] | None:
    """A per-request gate taking one slot of the shared rate limit, or None when the source shares none."""
    if not policy.shared_quota:
        return None
    from prefect.concurrency.sync import rate_limit

    name = quota_limit_name(policy.shared_quota)

    def gate() -> None:
        rate_limit(name, occupy=1, strict=True)

    return gate
