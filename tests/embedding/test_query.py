"""The query model gives the vectors the full sentence-transformers model gives, without importing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from embedding.int8_export import export_float
from embedding.int8_support import Int8Support
from embedding.model import Embedder, EmbeddingSettings
from embedding.query import QueryEmbedder, query_embedder

QUERIES = [
    "how is a flattened device tree blob passed to the kernel",
    "vendor branch",
    "   what does cvs do when two developers change the same file?   ",
    "x" * 3000,  # truncated to the window as the model truncates it
    "Ünïcödé queries, émojis 🚀 and 中文",
]


def test_query_vectors_equal_the_models() -> None:
    embedder = Embedder(EmbeddingSettings(precision="float32"))  # the session's may run bfloat16 (AMX CPUs)
    query = query_embedder(EmbeddingSettings())
    assert isinstance(query, QueryEmbedder)
    assert (query.identity, query.dimension, query.max_seq_length) == (
        embedder.identity,
        embedder.dimension,
        embedder.max_seq_length,
    )
    ours, theirs = query.embed(QUERIES), embedder.embed(QUERIES)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(ours * theirs, axis=1))) > 0.99999


def test_a_query_does_not_import_sentence_transformers() -> None:
    code = (
        "import sys\n"
        "from embedding.model import EmbeddingSettings\n"
        "from embedding.query import query_embedder\n"
        "query_embedder(EmbeddingSettings()).embed(['a query'])\n"
        "assert 'sentence_transformers' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_with_its_openvino_export_a_query_needs_no_torch(tmp_path: Path) -> None:
    """The float32 OpenVINO model ``ragline serve`` exports: the same vectors, and neither torch nor
    transformers imported to get them."""
    settings = EmbeddingSettings()
    spec = Embedder(settings.model_copy(update={"precision": "float32"}))
    export_float(spec.model_dir, spec.revision, spec.max_seq_length, tmp_path, Int8Support())
    ours = QueryEmbedder(settings, tmp_path).embed(QUERIES)
    theirs = spec.embed(QUERIES)
    assert float(np.min(np.sum(ours * theirs, axis=1))) > 0.99999
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from embedding.model import EmbeddingSettings\n"
        "from embedding.query import query_embedder\n"
        f"query_embedder(EmbeddingSettings(), Path({str(tmp_path)!r})).embed(['a query'])\n"
        "assert not {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules), 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
