"""The query model: one float32 transformer that embeds queries, without sentence-transformers.

A search embeds one short text. Importing sentence-transformers costs more than everything else a search does
(measured here: ~4x the import of torch and the bare transformer model), so queries run the model's
transformer directly and pool as its Pooling and Normalize modules do (``int8_tokens``): the same vectors as
``Embedder`` (cosine > 0.99999, tests/embedding/test_query.py). Where ``ragline serve`` has exported the
float32 model to OpenVINO (with the extra ``ragline[int8]``), queries run there and import neither torch nor
transformers. Models that pool otherwise than by the mean take the full ``Embedder``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedding.int8_export import XML, float_dir
from embedding.int8_tokens import INPUTS, BatchTokenizer, UnsupportedModel, check_mean_pooling, mean_pool
from embedding.model import Embedder, EmbeddingSettings, ModelIdentity, ModelTokenizer, TextEmbedder

log = logging.getLogger(__name__)


class QueryEmbedder:
    """Loaded on first use and kept; safe from several threads (the tokenizer is locked, inference is not)."""

    def __init__(self, settings: EmbeddingSettings, cache_dir: Path | None = None) -> None:
        """``cache_dir``: where ``ragline serve`` keeps OpenVINO exports; with its float32 model there (and the
        extra ``ragline[int8]`` installed) queries run on OpenVINO, without importing torch at all."""
        self.cache_dir = cache_dir
        self.settings = settings.model_copy(update={"precision": "float32"})
        self._spec = Embedder(self.settings)  # its metadata only: never loaded
        check_mean_pooling(self._spec.model_dir)
        self._lock = threading.Lock()
        self._model: Any = None

    @property
    def revision(self) -> str:
        return self._spec.revision

    @property
    def identity(self) -> ModelIdentity:
        return self._spec.identity

    @property
    def tokenizer(self) -> ModelTokenizer:
        return self._spec.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._spec.max_seq_length

    @property
    def dimension(self) -> int:
        return self._spec.dimension

    @cached_property
    def _batch_tokenizer(self) -> BatchTokenizer:
        return BatchTokenizer(self._spec.model_dir, self.max_seq_length)

    def _openvino(self) -> Any:
        """The compiled float32 OpenVINO model, when exported and runnable here (CPU only)."""
        if self.cache_dir is None or not self._spec.settings.device.startswith("cpu"):
            return None
        xml = float_dir(self.cache_dir, self.revision) / XML
        if not xml.is_file():
            return None
        try:
            import openvino  # only the runtime: the extra's NNCF (which imports torch) is for exporting
        except ImportError:
            return None
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}  # exact: no bf16 on AMX
        compiled = openvino.Core().compile_model(str(xml), "CPU", config)
        log.info("loaded the query model %s on OpenVINO as float32", self._spec.model_dir.name)
        return compiled

    def _load(self) -> Any:
        compiled = self._openvino()
        if compiled is not None:
            return compiled
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        model = AutoModel.from_pretrained(str(self._spec.model_dir), local_files_only=True)
        model = model.to(self._spec.settings.device).eval()
        log.info("loaded the query model %s on %s as float32", self._spec.model_dir.name, self._spec.settings.device)
        return model

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            if self._model is None:
                self._model = self._load()
            features = self._batch_tokenizer(texts)
        if not hasattr(self._model, "eval"):  # OpenVINO's compiled model; a request per call is thread-safe
            request = self._model.create_infer_request()
            names = {port.get_any_name() for port in self._model.inputs}
            hidden = request.infer({k: v for k, v in features.items() if k in names})[self._model.outputs[0]]
            return mean_pool(np.asarray(hidden), features["attention_mask"])
        import torch

        device = self._spec.settings.device
        inputs = {k: torch.from_numpy(features[k]).to(device) for k in INPUTS if k in features}
        with torch.inference_mode():
            hidden = self._model(**inputs).last_hidden_state
        return mean_pool(hidden.float().cpu().numpy(), features["attention_mask"])


def query_embedder(settings: EmbeddingSettings, cache_dir: Path | None = None) -> TextEmbedder:
    """The lightest model that embeds queries exactly as ``settings``' model embeds documents."""
    try:
        return QueryEmbedder(settings, cache_dir)
    except UnsupportedModel:
        return Embedder(settings.model_copy(update={"precision": "float32"}))
