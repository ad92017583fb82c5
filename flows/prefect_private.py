"""The only module that imports Prefect's private API (pinned by the Prefect version range).

Prefect 3.8's public API has no blocking acquire of a slot *with a lease* that hands the lease id back (the
public ``concurrency`` context manager keeps it to itself), nor a public lease-renewal helper; the client has
only the single, non-blocking HTTP call for each. ragline must record the lease id so that the next run can
release the slot of a run killed with SIGKILL, so these two private helpers stay, wrapped here.
tests/flows/test_limits.py checks their signatures, so a Prefect upgrade that changes them fails a test
rather than a sync."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def acquire_slot_with_lease(name: str, timeout_seconds: float | None, lease_seconds: float) -> uuid.UUID:
    """Take one slot of the global concurrency limit ``name`` (waiting up to ``timeout_seconds``; a missing
    limit is an error, not a silent pass) under a lease; returns the lease id."""
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    granted = acquire_concurrency_slots_with_lease(
        [name], 1, timeout_seconds=timeout_seconds, lease_duration=lease_seconds, strict=True
    )
    return granted.lease_id


@contextmanager
def renewed_lease(lease_id: uuid.UUID, lease_seconds: float) -> Iterator[None]:
    """Renew the lease from a background thread while the block runs; a failed renewal only warns."""
    from prefect.concurrency._leases import maintain_concurrency_lease

    with maintain_concurrency_lease(lease_id, lease_seconds, raise_on_lease_renewal_failure=False):
        yield
