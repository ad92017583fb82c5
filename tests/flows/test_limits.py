"""Prefect global concurrency limits for sources, against a real local Prefect server: one sync per source
at a time, and a request quota shared across processes through a Prefect rate limit."""

from __future__ import annotations

import contextvars
import inspect
import threading

import pytest

from connectors.http import HttpPolicy, ResilientClient
from flows import limits, prefect_private
from tests.support.httpserver import Reply, serve


def test_limit_names_are_valid_prefect_names() -> None:
    assert limits.source_limit_name("crm/eu west") == "ragline-source-crm_eu_west"
    assert limits.quota_limit_name("hubspot portal 42") == "ragline-quota-hubspot_portal_42"


def test_limits_are_created_with_the_policy_values(prefect_api: str) -> None:
    from prefect import get_client

    limits.ensure_limits("crm", HttpPolicy(rate_per_second=3.0, burst=2, shared_quota="portal-1"))
    limits.ensure_limits("crm", HttpPolicy(rate_per_second=5.0, burst=2, shared_quota="portal-1"))  # updated
    with get_client(sync_client=True) as client:
        slot = client.read_global_concurrency_limit_by_name(limits.source_limit_name("crm"))
        quota = client.read_global_concurrency_limit_by_name(limits.quota_limit_name("portal-1"))
    assert slot.limit == 1
    assert quota.limit == 2 and quota.slot_decay_per_second == 5.0
    with pytest.raises(ValueError, match="rate_per_second"):
        limits.ensure_limits("crm", HttpPolicy(shared_quota="portal-2"))


def test_a_second_sync_of_a_source_waits_for_the_first(prefect_api: str) -> None:
    limits.ensure_limits("wiki", None)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with limits.source_slot("wiki"):
            order.append("first in")
            holding.set()
            release.wait(30)
            order.append("first out")

    # Prefect's settings live in context variables, which a new thread does not inherit: pass them on.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(first,))
    thread.start()
    assert holding.wait(30)
    with pytest.raises(TimeoutError), limits.source_slot("wiki", timeout_seconds=1.0):
        order.append("second in while held")
    release.set()
    thread.join(30)
    with limits.source_slot("wiki", timeout_seconds=30):
        order.append("second in")
    assert order == ["first in", "first out", "second in"]


def test_every_request_takes_a_slot_of_the_shared_quota(prefect_api: str) -> None:
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    policy = HttpPolicy(rate_per_second=50.0, burst=5, shared_quota="portal-3", backoff_base=0.01)
    gate = limits.quota_gate(policy)
    assert gate is not None and limits.quota_gate(HttpPolicy()) is None
    taken: list[int] = []

    def counting_gate() -> None:
        gate()
        taken.append(1)

    with serve() as srv:
        srv.route("/x", [Reply(503), Reply(200, {"ok": True})])
        client = ResilientClient("crm", policy, base_url=srv.url)
        client.gate = counting_gate
        with pytest.raises(ConcurrencySlotAcquisitionError, match="portal-3"):  # strict: nobody created it
            client.get_json("/x")
        limits.ensure_limits("crm", policy)
        assert client.get_json("/x") == {"ok": True}
        client.close()
    assert len(taken) == len(srv.calls("/x")) == 2  # the retry took its own slot; the refused call sent nothing


def test_the_lease_of_a_killed_run_is_released_by_the_next_run(prefect_api: str) -> None:
    limits.ensure_limits("lost", None)
    # held by a process that was then killed: nobody renews or releases it
    leaked = prefect_private.acquire_slot_with_lease(limits.source_limit_name("lost"), None, 600)
    with pytest.raises(TimeoutError), limits.source_slot("lost", timeout_seconds=1.0):
        pass
    with limits.source_slot("lost", timeout_seconds=30, stale_leases=[leaked]) as lease:
        assert lease != leaked


def test_the_private_prefect_calls_ragline_wraps_keep_their_signatures() -> None:
    """flows.prefect_private calls these by keyword: a Prefect release that renames, drops or reorders them
    fails here, not in a sync."""
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    acquire = inspect.signature(acquire_concurrency_slots_with_lease).parameters
    assert list(acquire)[:2] == ["names", "slots"]
    assert {"timeout_seconds", "lease_duration", "strict"} <= set(acquire)
    assert acquire_concurrency_slots_with_lease.__annotations__["return"] == "ConcurrencyLimitWithLeaseResponse"
    assert "lease_id" in ConcurrencyLimitWithLeaseResponse.model_fields
    maintain = inspect.signature(maintain_concurrency_lease).parameters
    assert list(maintain)[:2] == ["lease_id", "lease_duration"]
    assert "raise_on_lease_renewal_failure" in maintain
