"""Calibrating a device before its worker serves: the precision it runs (as configured, the only candidate, or
measured against float32 by ``precision.calibrate``), its model loaded at that precision, and the memory a
batch takes there. Each result is cached under a key of everything that changes it (model revision, hardware,
torch, calibration set, quality bars), so that a restart does not pay for it again.

The pool calls ``DeviceCalibrator.prepare`` from each worker's thread; the calibrator holds no reference to
the pool. The calibration set itself is ``calibration_text``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from embedding.backend_status import record_choice
from embedding.budget import MemoryModel, pack
from embedding.calibration_text import QUERIES, calibration_texts
from embedding.devices import Device, batch_token_cap
from embedding.gates import Gates, known_items
from embedding.int8_export import is_cached
from embedding.int8_support import Int8Support, versions
from embedding.model import TextEmbedder
from embedding.pool_settings import PoolSettings
from embedding.precision import CalibrationCache, PrecisionChoice, Thresholds, calibrate, candidates, choose
from embedding.runner import Runner, RunnerFactory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibrated:
    """A device ready to serve: the precision chosen, its model loaded at it, its memory per batch."""

    choice: PrecisionChoice
    runner: Runner
    memory: MemoryModel


@dataclass
class DeviceCalibrator:
    """What calibrating needs: the model's metadata (``model``: revision, tokenizer, window, read when first
    needed), ``embedding.precision`` and the pool's settings. ``texts`` and ``queries`` replace the built-in
    calibration set (tests, or a caller with its own corpus); ``clock`` and ``cpu_bf16`` are seams for tests
    (``cpu_bf16`` None: detected from the CPU's AMX tiles)."""

    model: TextEmbedder
    precision: str
    pool: PoolSettings
    make_runner: RunnerFactory
    cache: CalibrationCache
    texts: Sequence[str] | None = None
    queries: Sequence[str] | None = None
    rounds: int = 2
    clock: Callable[[], float] = time.perf_counter
    cpu_bf16: bool | None = None
    int8: Int8Support = field(default_factory=Int8Support)
    gates: Gates = field(default_factory=Gates)
    """int8's bars (the issue's by default; tests loosen them to test the choice apart from this machine)."""
    # One calibration at a time: workers on like devices then reuse the first one's result, and two
    # calibrations never compete for the same cores.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def prepare(self, device: Device) -> Calibrated:
        """Choose the precision, load the model at it and size its memory, from the worker's thread."""
        with self._lock:
            choice = self.choose_precision(device)
            record_choice(self.cache.directory, self.model.settings.model, device, choice)
            runner = self.make_runner(device, choice.precision)
            runner.load()
            return Calibrated(choice, runner, self.memory_model(device, choice.precision, runner))

    def choose_precision(self, device: Device) -> PrecisionChoice:
        if self.precision != "auto":
            if self.precision == "int8":
                self.int8.require()  # the error names the missing extra
            return PrecisionChoice(self.precision, "configured")
        int8 = device.kind == "cpu" and self.int8.missing() is None and self._int8_exported()
        cuda_bf16 = device.kind == "cuda" and _cuda_bf16()
        names = candidates(device, cuda_bf16=cuda_bf16, cpu_bf16=self.cpu_bf16, int8=int8)
        if len(names) == 1:
            return PrecisionChoice(names[0], "the only candidate on this device")
        texts = list(self.texts or calibration_texts())
        queries = list(self.queries if self.queries is not None else QUERIES)
        thresholds = Thresholds(
            self.pool.min_cosine, self.pool.min_neighbour_overlap, self.pool.min_speedup, int8=self.gates
        )
        key = self.precision_key(device, names, queries, texts, thresholds)
        cached = self.cache.get("precision", key)
        if cached is not None:
            choice = PrecisionChoice.from_json(cached, cached=True)
            log.info("precision for %s from the calibration cache: %s", device.key, choice.summary())
            return choice
        if self.pool.calibrate == "cached_only":
            # resolve_precision's rule, on the candidates (which already know whether this CPU has AMX)
            default = "bfloat16" if device.kind == "cpu" and "bfloat16" in names else "float32"
            log.info("precision for %s not calibrated yet: %s, the device's default", device.key, default)
            return PrecisionChoice(default, "not calibrated yet: the device's default (ragline serve calibrates)")
        known = known_items(texts)
        everything = [*queries, *(item.query for item in known), *texts]
        counts = [max(1, min(c, self.model.max_seq_length)) for c in self.model.tokenizer.count(everything)]
        cap = batch_token_cap(self.pool.max_batch_tokens, device)
        batches = pack(counts, lambda _length: cap, self.pool.max_batch_items)

        def make(name: str) -> Runner:
            runner = self.make_runner(device, name)
            runner.load()
            return runner

        n_queries = len(queries) + len(known)
        measurements = calibrate(
            make, names, everything, batches, sum(counts), n_queries, rounds=self.rounds, clock=self.clock, known=known
        )
        choice = choose(measurements, thresholds)
        self.cache.put("precision", key, choice.to_json())
        log.info("precision for %s calibrated: %s", device.key, choice.summary())
        return choice

    def _int8_exported(self) -> bool:
        """int8 is measured only once its export is cached: making it (15-40 s here) is left to a long-lived
        process (``ragline serve`` builds it in the background), never to a run's calibration."""
        if is_cached(self.cache.directory, self.model.revision):
            return True
        log.info(
            "int8 is not offered to embedding.precision auto yet: its export is not built (ragline serve builds it "
            "in the background; embedding.precision: int8 builds it at once)"
        )
        return False

    def precision_key(
        self,
        device: Device,
        names: Sequence[str],
        queries: Sequence[str],
        texts: Sequence[str],
        thresholds: Thresholds,
    ) -> dict[str, Any]:
        """Everything a precision choice depends on; a change in any of it calibrates again."""
        return {
            "model": self.model.revision,
            "device": device.label,
            "threads": device.threads,
            "torch": _torch_version(),
            "candidates": list(names),
            "thresholds": [thresholds.min_cosine, thresholds.min_neighbour_overlap, thresholds.min_speedup],
            "int8": [
                versions(),
                thresholds.int8.max_recall_drop,
                thresholds.int8.min_neighbour_overlap,
                thresholds.int8.min_mean_cosine,
            ]
            if "int8" in names
            else None,
            "known_items": True,
            "calibration": hashlib.sha256(json.dumps([list(queries), list(texts)]).encode()).hexdigest()[:16],
            "batch_tokens": self.pool.max_batch_tokens,
        }

    def memory_model(self, device: Device, precision: str, runner: Runner) -> MemoryModel:
        """The memory a batch takes at ``precision`` on ``device``: cached, else measured by ``runner``."""
        key = self.memory_key(device, precision)
        cached = self.cache.get("memory", key)
        if cached is not None:
            return MemoryModel.from_json(cached)
        measured = runner.memory_model(self.model.max_seq_length)
        self.cache.put("memory", key, measured.to_json())
        return measured

    def memory_key(self, device: Device, precision: str) -> dict[str, Any]:
        return {
            "model": self.model.revision,
            "device": device.label,
            "precision": precision,
            "torch": _torch_version(),
            "max_seq_length": self.model.max_seq_length,
        }


def _cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def _torch_version() -> str:
    """From the installed distribution: a worker that runs int8 never imports torch (1-2 s) for its key."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "none"
