"""One model on one device at one precision: the only place the pool touches torch.

Loaded lazily from the model directory (safetensors) and kept warm. ``forward`` does what
``SentenceTransformer.encode`` does for one batch (preprocess, forward under ``inference_mode``, pool) and
returns unit float32 rows, normalised in float32 whatever the compute precision.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedding.budget import MemoryModel, analytic_memory_model, checked_memory_model, fit_memory_model
from embedding.devices import Device, is_oom, measure_cpu_peak
from embedding.int8_tokens import INPUTS, BatchTokenizer, UnsupportedModel, check_mean_pooling

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What a pool worker needs of a model on its device; tests wrap the real one to inject faults."""

    def load(self) -> None: ...

    def forward(self, texts: Sequence[str]) -> np.ndarray: ...

    def after_oom(self) -> None: ...

    def memory_model(self, max_seq_length: int) -> MemoryModel: ...


RunnerFactory = Callable[[Device, str], Runner]
"""Builds a (not yet loaded) runner for a device and a precision."""

# A shared model's Hugging Face tokenizer is not safe to call from two threads at once ("Already borrowed"):
# runners sharing one model share one lock around preprocessing.
_preprocess_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _preprocess_lock(model: Any) -> threading.Lock:
    with _locks_guard:
        lock = _preprocess_locks.get(model)
        if lock is None:
            lock = _preprocess_locks[model] = threading.Lock()
        return lock


def dtype_bytes(precision: str) -> int:
    """Bytes per activation element; autocast keeps some activations in float32, so it counts as 4."""
    return 2 if precision in ("bfloat16", "float16") else 4


def cast_weights(model: Any, precision: str) -> Any:
    """``model`` with its weights in the precision's dtype (in place); autocast precisions keep float32 weights."""
    if precision not in ("bfloat16", "float16"):
        return model
    import torch

    return model.to(getattr(torch, precision))


def autocast(precision: str, device_kind: str) -> AbstractContextManager[Any]:
    """``torch.autocast`` for the ``autocast-*`` precisions, nothing for the others."""
    if not precision.startswith("autocast-"):
        return nullcontext()
    import torch

    return torch.autocast(device_type=device_kind, dtype=getattr(torch, precision.removeprefix("autocast-")))


class TorchRunner:
    def __init__(
        self, model_dir: Path, device: Device, precision: str, *, model: Any = None, max_seq_length: int | None = None
    ) -> None:
        """``model``: an already loaded float32 SentenceTransformer on the device to reuse (cast on a copy).
        ``max_seq_length`` (the model's window): with it, a mean-pooled model loads as its bare transformer,
        without importing sentence-transformers (its import alone took longer than torch's and the model's
        load together here); without it, or for other models, through sentence-transformers."""
        self.model_dir = model_dir
        self.device = device
        self.precision = precision
        self._given = model
        self._max_seq_length = max_seq_length
        self._model: Any = None
        self._tokenize: BatchTokenizer | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._model = self._load()

    def _load(self) -> Any:
        if self.device.kind == "cpu" and self.device.threads:
            import torch

            # Per thread for OpenMP: the worker's thread loads its runners, and the threads it starts inherit it.
            torch.set_num_threads(self.device.threads)
        model = self._given
        if model is None:
            model = self._load_bare()
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

            model = SentenceTransformer(str(self.model_dir), device=self.device.torch_device, local_files_only=True)
        if self.precision in ("bfloat16", "float16") and model is self._given:
            model = copy.deepcopy(model)  # never cast a model someone else uses
        model = cast_weights(model, self.precision)
        model.eval()
        log.info("loaded %s on %s at %s", self.model_dir.name, self.device.key, self.precision)
        return model

    def _load_bare(self) -> Any:
        """The transformer alone (pooled and normalised in ``forward`` as the model's modules would), or None
        for a model it would not reproduce."""
        if self._max_seq_length is None:
            return None
        try:
            check_mean_pooling(self.model_dir)
        except UnsupportedModel:
            return None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._tokenize = BatchTokenizer(self.model_dir, self._max_seq_length)
        return AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).to(self.device.torch_device)

    @property
    def model(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model = self.model
        if self._tokenize is not None:
            return self._forward_bare(model, texts)
        from sentence_transformers.util import batch_to_device

        with _preprocess_lock(model):
            features = model.preprocess(list(texts))
        features = batch_to_device(features, torch.device(self.device.torch_device))
        with torch.inference_mode(), autocast(self.precision, self.device.kind):
            out = model(features)["sentence_embedding"]
        vectors = torch.nn.functional.normalize(out.float(), p=2, dim=1)
        return np.asarray(vectors.cpu().numpy(), dtype=np.float32)

    def _forward_bare(self, model: Any, texts: Sequence[str]) -> np.ndarray:
        """The transformer, then the mean of token embeddings under the mask, normalised in float32."""
        import torch

        assert self._tokenize is not None
        features = self._tokenize(texts)
        device = torch.device(self.device.torch_device)
        inputs = {k: torch.from_numpy(features[k]).to(device) for k in INPUTS if k in features}
        with torch.inference_mode(), autocast(self.precision, self.device.kind):
            hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return np.asarray(vectors.cpu().numpy(), dtype=np.float32)

    def after_oom(self) -> None:
        """Hand the failed batch's cached blocks back, so the retry is not refused by fragmentation."""
        if self.device.kind == "cuda":
            import torch

            torch.cuda.empty_cache()

    def memory_model(self, max_seq_length: int) -> MemoryModel:
        """On CUDA: fitted to the peak allocation of calibration batches (``max_memory_allocated``). On CPU,
        where torch keeps no such count: the analytic estimate from the model's config, checked against the
        growth of the resident set's high-water mark over one full-length batch (``measure_cpu_peak``)."""
        config = json.loads((self.model_dir / "config.json").read_text())
        long, mid = max_seq_length, max(8, max_seq_length // 2)
        self.forward(["warm up"])
        analytic = analytic_memory_model(config, dtype_bytes(self.precision))
        if self.device.kind == "cuda":
            samples = []
            for n, length in [(4, 32), (16, 32), (4, mid), (16, mid), (4, long), (16, long), (32, long)]:
                try:
                    samples.append((n, length, self._cuda_peak(n, length)))
                except Exception as err:
                    if not is_oom(err):
                        raise
                    break  # a small GPU or a big model: fit on the shapes that fitted
            self.after_oom()
            if len(samples) >= 3:
                return fit_memory_model(samples, f"measured on {len(samples)} batches")
            return checked_memory_model(analytic, samples)
        measured = []
        for n, length in [(16, long)]:
            peak = measure_cpu_peak(functools.partial(self.forward, _texts_of(n, length)))
            if peak is not None:
                measured.append((n, length, float(peak)))
        return checked_memory_model(analytic, measured)

    def _cuda_peak(self, items: int, length: int) -> float:
        import torch

        torch.cuda.synchronize(self.device.torch_device)
        torch.cuda.reset_peak_memory_stats(self.device.torch_device)
        base = torch.cuda.memory_allocated(self.device.torch_device)
        self.forward(_texts_of(items, length))
        torch.cuda.synchronize(self.device.torch_device)
        return float(torch.cuda.max_memory_allocated(self.device.torch_device) - base)


def _texts_of(items: int, length: int) -> list[str]:
    """Texts of about ``length`` tokens with special tokens (one token per word in WordPiece vocabularies;
    longer ones are truncated to the window, which is the point of the full-length shape)."""
    return [" ".join(["the"] * max(1, length - 2))] * items
