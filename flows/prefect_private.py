"""The only module that imports Prefect's private API (pinned by the Prefect version range).

Prefect 3.8's public API has no blocking acquire of a slot *with a lease* that hands the lease id back (the
public ``concurrency`` context manager keeps it to itself), nor a public lease-renewal helper; the client has
only the single, non-blocking HTTP call for each. ragline must record the lease id so that the next run can
release the slot of a run killed with SIGKILL, so these two private helpers stay, wrapped here.
tests/flows/test_limits.py checks their signatures, so a Prefect upgrade that changes them fails a test
rather than a sync."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any


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


def cron_interval(cron: str, *, span: timedelta = timedelta(days=366), most: int = 2000) -> float:
    """Seconds of the longest gap between consecutive runs of ``cron``, read by the croniter Prefect vendors
    and schedules with (macros and day-of-month/day-of-week read as Prefect reads them), over ``span`` of runs
    (seasonal schedules included) or its first ``most`` runs (frequent ones are regular). Wall-clock times: a
    daylight-saving change moves a real gap by an hour at most."""
    from prefect._vendor.croniter.croniter import croniter

    make: Any = croniter  # untyped
    start = datetime(2001, 1, 1)  # a fixed Monday: the same answer on every start
    runs = make(cron, start, day_or=True)
    times: list[datetime] = [runs.get_next(datetime)]
    while len(times) <= most and times[-1] - times[0] < span:
        times.append(runs.get_next(datetime))
    return max((b - a).total_seconds() for a, b in itertools.pairwise(times))
