"""Scheduled runs of ``ragline serve``'s deployments, executed in the serve process on its warm services.

A Prefect Runner starts every scheduled flow run in a subprocess, which imports torch, loads the model and
starts the parser again: seconds of fixed cost for a run that may have one changed page to embed. Here the
service registers its deployments with Prefect (their schedules live on the server, as a Runner's do), asks for
due runs every ``serve.poll_seconds``, claims each by moving it to Pending (a run another process claimed is
rejected there, so two services never run it twice; a deployment's concurrency limit is enforced by the same
transition), and runs the flow on a worker thread through Prefect's own engine: the run still shows its
states, logs and artifacts in the UI, and its tasks use this process's warm ``Services``.

At the stop, running flow runs get ``serve.drain_seconds`` to finish; a run cut short by a crash is left
Running in Prefect and its documents to the ledger, which the next run resumes from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import Flow

log = logging.getLogger(__name__)


class ScheduledRuns:
    """Serve ``deployments`` (each with the flow it runs): register, poll, claim, run in this process."""

    def __init__(
        self,
        deployments: list[tuple[RunnerDeployment, Flow[Any, Any]]],
        *,
        limit: int,
        poll_seconds: float,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        """``ready``: whether the services are warm; no run is claimed before (it would load what warming
        loads, twice, on the same cores)."""
        self.deployments = deployments
        self.ready = ready
        self.limit = limit
        self.poll_seconds = poll_seconds
        self.flows: dict[UUID, Flow[Any, Any]] = {}
        self.running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register the deployments (and their schedules) with Prefect, then poll for due runs."""
        for deployment, flow in self.deployments:
            self.flows[await deployment.aapply()] = flow
        self._task = asyncio.create_task(self._poll(), name="scheduled-runs")

    def failure(self) -> str | None:
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is None:
            return None
        return f"polling Prefect for scheduled runs stopped: {task.exception()!r}"

    async def _poll(self) -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            while not self._stopping.is_set():
                free = self.limit - len(self.running)
                if free > 0 and self.ready():
                    try:
                        due = await client.get_scheduled_flow_runs_for_deployments(
                            list(self.flows), scheduled_before=datetime.now(UTC), limit=free
                        )
                        for flow_run in due:
                            if await self._claim(client, flow_run):
                                self._launch(flow_run)
                    except Exception as err:  # noqa: BLE001 - the Prefect server restarting: ask again later
                        log.warning("asking Prefect for scheduled runs failed: %s: %s", type(err).__name__, err)
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.poll_seconds)
                except TimeoutError:
                    continue

    @staticmethod
    async def _claim(client: Any, flow_run: FlowRun) -> bool:
        from prefect.client.schemas.responses import SetStateStatus
        from prefect.states import Pending

        result = await client.set_flow_run_state(flow_run.id, Pending())
        if result.status != SetStateStatus.ACCEPT:
            log.debug("scheduled run %s not claimed: %s", flow_run.name, result.status.value)
            return False
        return True

    def _launch(self, flow_run: FlowRun) -> None:
        flow = self.flows[flow_run.deployment_id] if flow_run.deployment_id else None
        if flow is None:
            return
        task = asyncio.create_task(asyncio.to_thread(self._execute, flow, flow_run), name=f"flow-run-{flow_run.name}")
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    @staticmethod
    def _execute(flow: Flow[Any, Any], flow_run: FlowRun) -> None:
        from prefect.flow_engine import run_flow

        log.info("running scheduled flow run %s (%s) in this process", flow_run.name, flow.name)
        state = run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
        log.info("scheduled flow run %s ended %s", flow_run.name, getattr(state, "name", state))

    async def stop(self, grace: float) -> None:
        """Stop polling; give running flow runs ``grace`` seconds to finish."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.running:
            _, pending = await asyncio.wait(set(self.running), timeout=grace)
            if pending:
                log.warning("stopping: %d scheduled flow run(s) still running are left to the ledger", len(pending))
