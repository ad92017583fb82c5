"""What the int8 backend does around the network, without torch or sentence-transformers: tokenise a batch as
``SentenceTransformer.preprocess`` does (stripped text, truncated to the model's window, padded to the longest)
and mean-pool and normalise its output as the model's Pooling and Normalize modules do. Keeping torch out of
this path is what lets a worker with a cached export start without importing it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class UnsupportedModel(ValueError):
    """A model the int8 backend does not reproduce (pooling other than the mean of token embeddings)."""


_MODULES = {"Transformer", "Pooling", "Normalize"}


def check_mean_pooling(model_dir: Path) -> None:
    """The backend pools by the mean of token embeddings, as all-MiniLM-L6-v2 does; other poolings, or other
    modules after the transformer (a Dense projection), would silently give other vectors, so they are
    refused."""
    config = model_dir / "1_Pooling" / "config.json"
    modes = json.loads(config.read_text()) if config.is_file() else {}
    chosen = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v is True)
    if chosen != ["pooling_mode_mean_tokens"]:
        raise UnsupportedModel(f"the int8 backend handles mean pooling only; {model_dir.name} pools by {chosen}")
    listed = model_dir / "modules.json"
    modules = json.loads(listed.read_text()) if listed.is_file() else []
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules}
    if not kinds <= _MODULES:
        raise UnsupportedModel(
            f"{model_dir.name} has modules beyond transformer, pooling and normalize: {sorted(kinds)}"
        )


class BatchTokenizer:
    def __init__(self, model_dir: Path, max_seq_length: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json may carry a fixed padding and another truncation (MiniLM's: 128): set both as
        # sentence-transformers does at run time.
        self._tok.enable_truncation(max_length=max_seq_length)
        pad = self._tok.padding or {}
        self._tok.enable_padding(pad_id=int(pad.get("pad_id", 0)), pad_token=str(pad.get("pad_token", "[PAD]")))

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tok.encode_batch([text.strip() for text in texts])
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Unit float32 rows: the mean of the token embeddings under the mask, normalised in float32."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden.astype(np.float32) * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)
