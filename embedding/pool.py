"""The embedding worker pool: one worker thread per device (each GPU, or the CPU), each with its model loaded
once and kept warm, pulling token-budget batches from a two-lane queue.

- Batches are packed from the queue by padded tokens (chunks sorted longest first) within the device's budget:
  what its free memory allows for the calibrated memory per token, capped, and shrunk by out-of-memory.
- A batch that runs out of memory goes back to the head of its lane and the device's budget halves, so it is
  re-packed into smaller batches; the budget grows back after a streak of successes (``budget.BudgetController``).
- A worker thread that dies mid-batch has its batch re-queued and is restarted; each chunk has a bounded number
  of attempts, after which its request fails with the error, never silently.
- Requests of few tokens take the low-latency lane, served before bulk work: at worst they wait for the batch
  each worker has in hand.
- ``stats()`` gives the scaling signal (queued and in-flight chunks) and per-device throughput and batch sizes;
  the same figures go to Prometheus (``embedding.pool_metrics``): per batch, per budget change, or read when
  scraped, never per chunk.

Threads suffice: torch releases the GIL in its kernels. The pool offers the ``Embedder`` surface the pipeline
uses (``embed``, ``identity``, ``tokenizer``, ``max_seq_length``, ``dimension``, ``settings``, ``revision``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedding.calibrate import DeviceCalibrator
from embedding.devices import Device, MemoryProbe, default_probe, discover_devices
from embedding.devices import is_oom as is_oom
from embedding.int8_runner import Int8Runner
from embedding.int8_support import Int8Support
from embedding.model import Embedder, EmbeddingSettings, ModelIdentity, ModelTokenizer
from embedding.pool_metrics import unwatch_lanes, watch_lanes
from embedding.pool_queue import EmbeddingError, EmbedRequest, Item, Lane, Lanes
from embedding.pool_settings import PoolSettings
from embedding.pool_stats import DeviceStats, PoolStats
from embedding.pool_worker import Worker
from embedding.precision import CalibrationCache, PrecisionChoice
from embedding.runner import Runner, RunnerFactory, TorchRunner

__all__ = ["DeviceStats", "EmbedRequest", "EmbeddingError", "EmbeddingPool", "Lane", "PoolStats"]

log = logging.getLogger(__name__)


class EmbeddingPool:
    def __init__(
        self,
        settings: EmbeddingSettings | None = None,
        *,
        embedder: Embedder | None = None,
        devices: Sequence[Device] | None = None,
        probe: MemoryProbe = default_probe,
        runner_factory: RunnerFactory | None = None,
        calibration_texts: Sequence[str] | None = None,
        calibration_queries: Sequence[str] | None = None,
        calibration_rounds: int = 2,
        clock: Callable[[], float] = time.perf_counter,
        cpu_bf16: bool | None = None,
        int8: Int8Support | None = None,
    ) -> None:
        """``embedder`` lends the model's metadata (identity, tokenizer) without loading it; ``devices``,
        ``probe``, ``runner_factory`` and ``int8`` are seams for tests and benchmarks (default: discovered
        devices, real memory probes, torch runners and the int8 runner, the int8 extra as installed)."""
        if embedder is not None and settings is not None and embedder.settings.model != settings.model:
            raise ValueError(
                f"embedding.model {settings.model!r} differs from the given embedder's {embedder.settings.model!r}"
            )
        self._meta = embedder or Embedder(settings or EmbeddingSettings())
        self.settings: EmbeddingSettings = settings or self._meta.settings
        self.pool_settings: PoolSettings = self.settings.pool
        self._devices = list(devices) if devices is not None else None
        self._probe = probe
        self._int8 = int8 or Int8Support()
        self._factory: RunnerFactory = runner_factory or self._make_runner
        self._clock = clock
        self._calibrator = DeviceCalibrator(
            self._meta,
            self.settings.precision,
            self.pool_settings,
            self._factory,
            CalibrationCache(self.pool_settings.calibration_dir),
            texts=calibration_texts,
            queries=calibration_queries,
            rounds=calibration_rounds,
            clock=clock,
            cpu_bf16=cpu_bf16,
            int8=self._int8,
        )
        self._cond = threading.Condition()
        self._start_lock = threading.Lock()
        self._lanes = Lanes()
        self._workers: list[Worker] = []
        self._requests: set[EmbedRequest] = set()
        self._duplicates = 0
        self._started = False
        self._closing = False
        watch_lanes(self)

    def _make_runner(self, device: Device, precision: str) -> Runner:
        """The default runners: OpenVINO for int8 (its export cached beside the calibration results), torch
        for the rest."""
        if precision == "int8":
            return Int8Runner(
                self.model_dir,
                self.revision,
                device,
                self.max_seq_length,
                cache_dir=self.pool_settings.calibration_dir,
                support=self._int8,
            )
        return TorchRunner(self.model_dir, device, precision, max_seq_length=self.max_seq_length)

    # The Embedder surface the pipeline uses.
    @property
    def model_dir(self) -> Path:
        return self._meta.model_dir

    @property
    def revision(self) -> str:
        return self._meta.revision

    @property
    def identity(self) -> ModelIdentity:
        return self._meta.identity

    @property
    def tokenizer(self) -> ModelTokenizer:
        return self._meta.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._meta.max_seq_length

    @property
    def dimension(self) -> int:
        return self._meta.dimension

    def embed(
        self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None, lane: Lane | None = None
    ) -> np.ndarray:
        """Unit-length float32 vectors, one per text, in order (the ``Embedder.embed`` contract)."""
        return self.submit(texts, token_counts=token_counts, lane=lane).result()

    def submit(
        self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None, lane: Lane | None = None
    ) -> EmbedRequest:
        """Queue ``texts`` without waiting. ``token_counts`` (the chunker's, special tokens included) saves
        counting them again; ``lane`` defaults to INTERACTIVE for requests of at most
        ``pool.small_request_tokens`` tokens."""
        counts = list(token_counts) if token_counts is not None else self.tokenizer.count(texts) if texts else []
        if len(counts) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(counts)} token counts")
        window = self.max_seq_length
        clipped = [max(1, min(c, window)) for c in counts]
        total = sum(clipped)
        if lane is None:
            lane = Lane.INTERACTIVE if total <= self.pool_settings.small_request_tokens else Lane.BULK
        request = EmbedRequest(len(texts), self.dimension, lane, total)
        if not texts:
            return request
        self.start()
        items = [Item(request, i, t, n) for i, (t, n) in enumerate(zip(texts, clipped, strict=True))]
        with self._cond:
            if self._closing:
                raise EmbeddingError("the embedding pool is closed")
            if not any(w.state in ("starting", "ready") for w in self._workers):
                raise EmbeddingError(f"no embedding device is usable: {self._device_errors()}")
            self._requests.add(request)
            self._lanes.add(lane, items)
            self._cond.notify_all()
        return request

    def start(self) -> None:
        """Start the workers (idempotent); each loads its model in its own thread. Called by the first
        ``submit``; call it early to have the models warm before the first request."""
        with self._start_lock:
            if self._started:
                return
            devices = self._devices
            if devices is None:
                pool = self.pool_settings
                explicit = self.settings.device if "device" in self.settings.model_fields_set else None
                devices = discover_devices(pool.devices, explicit_device=explicit, cpu_threads=pool.cpu_threads)
            with self._cond:
                for device in devices:
                    worker = Worker(device)
                    self._workers.append(worker)
                    self._spawn(worker)
                self._started = True

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers after their current batch; requests still queued fail with an error."""
        unwatch_lanes(self)
        with self._cond:
            self._closing = True
            self._fail_all(EmbeddingError("the embedding pool was closed before this request was embedded"))
            self._cond.notify_all()
            threads = [w.thread for w in self._workers if w.thread is not None]
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def __enter__(self) -> EmbeddingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker has loaded and calibrated its model (or failed to)."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while any(w.state == "starting" for w in self._workers):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"embedding workers not ready after {timeout} s")
                self._cond.wait(left)

    def precision_choices(self) -> dict[str, PrecisionChoice]:
        with self._cond:
            return {w.device.key: w.precision for w in self._workers if w.precision is not None}

    def stats(self) -> PoolStats:
        with self._cond:
            queued = self._lanes.queued()
            in_flight = [w.in_flight for w in self._workers if w.in_flight is not None]
            devices = [w.stats() for w in self._workers]
            return PoolStats(
                queued_chunks=len(queued),
                queued_tokens=sum(item.tokens for item in queued),
                queued_interactive=len(self._lanes.queued(Lane.INTERACTIVE)),
                queued_bulk=len(self._lanes.queued(Lane.BULK)),
                in_flight_batches=len(in_flight),
                in_flight_chunks=sum(len(b) for b in in_flight),
                pending_requests=len(self._requests),
                duplicates=self._duplicates,
                devices=devices,
            )

    def lane_load(self) -> dict[Lane, tuple[int, int]]:
        """Per lane: chunks queued, and chunks in batches being embedded (by their request's lane). What the
        lane gauges read when scraped; cheap: counts, no lists of the queue."""
        with self._cond:
            in_flight = dict.fromkeys(Lane, 0)
            for worker in self._workers:
                for item in worker.in_flight or ():
                    in_flight[item.request.lane] += 1
            return {lane: (self._lanes.count(lane), in_flight[lane]) for lane in Lane}

    # Workers.
    def _spawn(self, worker: Worker) -> None:
        worker.thread = threading.Thread(
            target=self._run, args=(worker,), name=f"embed-{worker.device.key}", daemon=True
        )
        worker.thread.start()

    def _run(self, worker: Worker) -> None:
        error: BaseException | None = None
        try:
            if worker.state == "starting":
                self._prepare(worker)
            while (batch := self._next_batch(worker)) is not None:
                self._process(worker, batch)
        except BaseException as err:  # noqa: BLE001  (the thread is ending: _exited re-queues and reports it)
            error = err
        finally:
            self._exited(worker, error)

    def _prepare(self, worker: Worker) -> None:
        """Load, choose the precision, calibrate memory and size the budget, in the worker's thread."""
        device, pool = worker.device, self.pool_settings
        if device.kind == "cuda":
            import torch

            torch.cuda.set_device(device.torch_device)  # kernels that use the current device land on ours
        calibrated = self._calibrator.prepare(device)
        usable = self._probe(device) * pool.memory_fraction
        with self._cond:
            worker.ready(calibrated, usable, pool)
            worker.metrics.budget(worker.budget_bytes(self.max_seq_length))
            self._cond.notify_all()
        log.info(
            "embedding worker %s ready: %s; memory %s; %.0f MiB usable, budget %d padded tokens at %d tokens",
            device.key,
            calibrated.choice.summary(),
            calibrated.memory.source,
            usable / 2**20,
            worker.budget(self.max_seq_length),
            self.max_seq_length,
        )

    def _next_batch(self, worker: Worker) -> list[Item] | None:
        with self._cond:
            while True:
                if self._closing:
                    return None
                batch = self._lanes.take(worker.budget, self.pool_settings.max_batch_items)
                if batch:
                    worker.in_flight = batch
                    return batch
                self._cond.wait()

    def _process(self, worker: Worker, batch: list[Item]) -> None:
        assert worker.runner is not None
        padded = len(batch) * max(item.tokens for item in batch)
        start = self._clock()
        oom: str | None = None
        try:
            vectors = worker.runner.forward([item.text for item in batch])
        except Exception as err:
            if not is_oom(err):
                raise  # a crash: the thread ends, and _exited re-queues the batch
            # Only the message is kept: the traceback's frames hold the failed batch's tensors, and the
            # device cache cannot be emptied while they live.
            oom = f"{type(err).__name__}: {err}"
        if oom is not None:
            self._out_of_memory(worker, batch, padded, oom)
            return
        elapsed = self._clock() - start
        if vectors.shape != (len(batch), self.dimension):
            raise EmbeddingError(
                f"device {worker.device.key} returned vectors of shape {vectors.shape} for a batch of {len(batch)}"
            )
        if self._complete(worker, batch, vectors, padded, elapsed):
            self._refresh_memory(worker)

    def _complete(self, worker: Worker, batch: list[Item], vectors: np.ndarray, padded: int, elapsed: float) -> bool:
        """Record a finished batch; True when the budget grew (memory is then probed again)."""
        assert worker.controller is not None
        with self._cond:
            for item, vector in zip(batch, vectors, strict=True):
                request = item.request
                if request.error is not None:
                    continue
                if not request.put(item.index, vector):
                    self._duplicates += 1
                    log.error("chunk %d embedded twice on %s", item.index, worker.device.key)
                elif request.done():
                    self._requests.discard(request)
            tokens = sum(item.tokens for item in batch)
            worker.counters.record_batch(len(batch), tokens, padded, elapsed)
            worker.metrics.batch(tokens, padded, elapsed)
            worker.in_flight = None
            grew = worker.controller.on_success()
            if grew:
                worker.metrics.regrew(worker.budget_bytes(self.max_seq_length))
            return grew

    def _out_of_memory(self, worker: Worker, batch: list[Item], padded: int, err: str) -> None:
        assert worker.controller is not None and worker.runner is not None
        worker.runner.after_oom()
        with self._cond:
            worker.counters.ooms += 1
            before = worker.controller.limit
            after = worker.controller.on_oom(padded)
            worker.metrics.shrank(worker.budget_bytes(self.max_seq_length))
            log.warning(
                "out of memory on %s with %d chunks (%d padded tokens): budget %d -> %d padded tokens "
                "(shrink %d on this device): %s",
                worker.device.key,
                len(batch),
                padded,
                before,
                after,
                worker.controller.shrinks,
                err,
            )
            if len(batch) == 1:
                batch[0].attempts += 1  # a chunk that does not fit alone: retried a bounded number of times
            self._requeue(batch, f"out of memory on {worker.device.key}: {err}")
            worker.in_flight = None
            self._cond.notify_all()
        self._refresh_memory(worker)

    def _refresh_memory(self, worker: Worker) -> None:
        """Probe free memory again (others may have taken or freed some) and move the ceiling with it."""
        usable = self._probe(worker.device) * self.pool_settings.memory_fraction
        with self._cond:
            worker.set_usable(usable, self.pool_settings)
            worker.metrics.budget(worker.budget_bytes(self.max_seq_length))

    def _requeue(self, batch: list[Item], cause: str) -> None:
        """Put ``batch`` back at the head of its lanes (callers hold the lock); chunks out of attempts fail
        their request instead."""
        retry: list[Item] = []
        for item in batch:
            if item.request.error is not None:
                continue
            if item.attempts >= self.pool_settings.max_attempts:
                tried = f"chunk {item.index} ({item.tokens} tokens) failed {item.attempts} times; last: {cause}"
                self._fail(item.request, EmbeddingError(tried))
                continue
            retry.append(item)
        self._lanes.push_front(retry)  # less those of requests just failed

    def _exited(self, worker: Worker, error: BaseException | None) -> None:
        with self._cond:
            if worker.in_flight:
                for item in worker.in_flight:
                    item.attempts += 1
                self._requeue(worker.in_flight, f"worker {worker.device.key} died: {error!r}")
                worker.in_flight = None
            if error is None or self._closing:
                worker.state = "stopped" if worker.state != "retired" else worker.state
                self._cond.notify_all()
                return
            loading = worker.state == "starting"
            if worker.crashed(error, self.pool_settings.max_restarts):
                log.error(
                    "embedding device %s retired after %s: %s",
                    worker.device.key,
                    "failing to start" if loading else f"{worker.counters.crash_streak} crashes in a row",
                    worker.error,
                    exc_info=error,
                )
                worker.state = "retired"
                if not any(w.state in ("starting", "ready") for w in self._workers):
                    self._fail_all(EmbeddingError(f"no embedding device is usable: {self._device_errors()}"))
            else:
                log.error(
                    "embedding worker %s died (%s); its batch is re-queued and the worker restarted",
                    worker.device.key,
                    worker.error,
                    exc_info=error,
                )
                worker.counters.restarts += 1
                self._spawn(worker)
            self._cond.notify_all()

    def _fail(self, request: EmbedRequest, error: EmbeddingError) -> None:
        """Fail ``request`` and drop its queued chunks (callers hold the lock)."""
        if request.fail(error):
            self._requests.discard(request)
            self._lanes.drop(request)

    def _fail_all(self, error: EmbeddingError) -> None:
        for request in list(self._requests):
            self._fail(request, error)
        self._lanes.clear()

    def _device_errors(self) -> str:
        return "; ".join(f"{w.device.key}: {w.error or w.state}" for w in self._workers) or "no devices"
