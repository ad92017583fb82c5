"""The ``int8`` precision: the model quantised by NNCF (``int8_export``), run by OpenVINO on the CPU.

A ``Runner`` like ``TorchRunner``: the pool and the calibration use it through the same four methods. It
runs on CPUs only (OpenVINO's CPU plugin uses VNNI or AMX int8 kernels where the CPU has them); the
operations NNCF keeps in float run at OpenVINO's default inference precision for the CPU (bfloat16 on CPUs with
AMX, float32 elsewhere), which calibration measures like everything else.

Model identity: int8 vectors keep the float32 model's identity (name, revision, dim). Mixing them in one
generation stays within the gates (bench/int8.py, every other chunk int8: recall@5 -0.006, top-10 overlap
0.954, int8 documents scored +0.0017 higher by int8 queries against a score spread of 0.13), while an identity
per precision would re-embed everything whenever ``auto`` chooses differently on another machine.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedding.budget import MemoryModel, analytic_memory_model, checked_memory_model
from embedding.devices import Device, measure_cpu_peak
from embedding.int8_export import load_int8_model
from embedding.int8_support import Int8Support
from embedding.int8_tokens import INPUTS, BatchTokenizer, check_mean_pooling, mean_pool

log = logging.getLogger(__name__)

BACKEND = "openvino-int8"
"""How ``int8`` vectors are computed, shown with the calibration's figures (``backend_status``)."""


class Int8Runner:
    def __init__(
        self,
        model_dir: Path,
        revision: str,
        device: Device,
        max_seq_length: int,
        *,
        cache_dir: Path | None = None,
        support: Int8Support | None = None,
    ) -> None:
        """``cache_dir``: where the export is kept (None: quantised in memory at every load)."""
        if device.kind != "cpu":
            raise ValueError(f"embedding.precision int8 runs on CPUs only, not on {device.key}")
        self.model_dir = model_dir
        self.revision = revision
        self.device = device
        self.max_seq_length = max_seq_length
        self.cache_dir = cache_dir
        self.support = support or Int8Support()
        self.from_cache: bool | None = None
        """After ``load``: whether the export was read from ``cache_dir`` rather than made."""
        self._compiled: Any = None
        self._tokenizer: BatchTokenizer | None = None
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._compiled is None:
                self._compiled = self._load()

    def _load(self) -> Any:
        self.support.require()
        check_mean_pooling(self.model_dir)
        tokenizer = BatchTokenizer(self.model_dir, self.max_seq_length)
        model, self.from_cache = load_int8_model(self.model_dir, self.revision, tokenizer, self.support, self.cache_dir)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.device.threads:
            config["INFERENCE_NUM_THREADS"] = self.device.threads
        compiled = self.support.openvino().Core().compile_model(model, "CPU", config)
        self._tokenizer = tokenizer
        log.info(
            "loaded %s on %s as int8 (OpenVINO, export %s)",
            self.model_dir.name,
            self.device.key,
            "from the cache" if self.from_cache else "made now",
        )
        return compiled

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        if self._compiled is None:
            self.load()
        assert self._tokenizer is not None
        with self._tokenizer_lock:  # a Hugging Face tokenizer is not safe to call from two threads at once
            features = self._tokenizer(texts)
        # A compiled model's __call__ shares one infer request: a request of our own per call is thread-safe.
        request = self._compiled.create_infer_request()
        hidden = request.infer({name: features[name] for name in INPUTS})[0]
        return mean_pool(np.asarray(hidden), features["attention_mask"])

    def after_oom(self) -> None:
        """Nothing to free: OpenVINO on the CPU keeps no cache of blocks between batches."""

    def memory_model(self, max_seq_length: int) -> MemoryModel:
        """The analytic estimate from the model's config (float32 activations: an upper bound here), checked
        against the growth of the resident set's high-water mark over one full-length batch."""
        config = json.loads((self.model_dir / "config.json").read_text())
        self.forward(["warm up"])
        analytic = analytic_memory_model(config, 4)
        texts = [" ".join(["the"] * max(1, max_seq_length - 2))] * 16
        peak = measure_cpu_peak(functools.partial(self.forward, texts))
        return checked_memory_model(analytic, [] if peak is None else [(16, max_seq_length, float(peak))])
