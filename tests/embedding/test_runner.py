"""The pool's torch runner: a mean-pooled model loads as its bare transformer (no sentence-transformers import,
the largest part of a worker's start) and gives the model's own vectors; other models keep the full path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedding.devices import Device
from embedding.int8_tokens import UnsupportedModel, check_mean_pooling
from embedding.model import Embedder, EmbeddingSettings
from embedding.runner import TorchRunner

CPU = Device(key="cpu", torch_device="cpu", kind="cpu", label="test cpu", threads=2)
TEXTS = [
    "  The tide tables for the estuary are printed each spring by the harbour master.  ",
    "def parse(path):\n    return open(path).read()",
    "Der Leuchtturm steht seit 1871 auf der Klippe.",
    " ".join(["lantern"] * 400),  # past the window: truncated as the model truncates
]


def test_bare_transformer_gives_the_models_vectors(embedder: Embedder) -> None:
    runner = TorchRunner(embedder.model_dir, CPU, "float32", max_seq_length=embedder.max_seq_length)
    vectors = runner.forward(TEXTS)
    reference = Embedder(EmbeddingSettings(precision="float32")).embed(TEXTS)  # the session's may run bfloat16
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.99999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    bf16 = TorchRunner(embedder.model_dir, CPU, "bfloat16", max_seq_length=embedder.max_seq_length).forward(TEXTS)
    assert np.min(np.sum(bf16 * reference, axis=1)) > 0.99


def test_a_worker_start_never_imports_sentence_transformers(embedder: Embedder) -> None:
    code = (
        "import sys; from pathlib import Path; from embedding.devices import Device; "
        "from embedding.runner import TorchRunner; "
        "d = Device(key='cpu', torch_device='cpu', kind='cpu', label='cpu', threads=1); "
        f"r = TorchRunner(Path({str(embedder.model_dir)!r}), d, 'float32', max_seq_length={embedder.max_seq_length}); "
        "print(r.forward(['a lighthouse']).shape, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[-1] == "False", out.stdout


def copy_model(embedder: Embedder, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(embedder.model_dir, target)
    return target


def test_models_it_would_not_reproduce_take_the_full_path(embedder: Embedder, tmp_path: Path) -> None:
    model = copy_model(embedder, tmp_path)
    modules = json.loads((model / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModel, match="Dense"):
        check_mean_pooling(model)
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    (model / "modules.json").write_text(json.dumps(modules[:2]))
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(UnsupportedModel, match="cls"):
        check_mean_pooling(model)
    runner = TorchRunner(model, CPU, "float32", max_seq_length=embedder.max_seq_length)
    runner.load()
    assert runner._tokenize is None  # loaded through sentence-transformers, which pools by CLS as configured
