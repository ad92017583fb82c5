"""The int8 model: the installed float32 model converted to OpenVINO and quantised statically by NNCF, then
cached as OpenVINO IR so that only the first start pays for it (~15-25 s here: torch import, conversion,
calibration statistics) and later ones load it in well under a second without torch.

Recipe (measured in bench/int8.py, docs/benchmarks.md): NNCF's ``ModelType.TRANSFORMER`` preset, which
quantises the MatMuls of every layer to int8 per channel and keeps softmax, LayerNorm, GELU and the embeddings
in float; SmoothQuant (its default for transformers) moves activation outliers into the weights first; the
first and the last encoder layer stay in float entirely (``float_layers``). The
activation ranges come from the built-in calibration set (``calibration_text``), not from the user's corpus:
the same model and packages give the same export everywhere.

The cache directory is keyed by everything that changes the export: model revision, OpenVINO and NNCF
versions, the recipe and the calibration texts. It is written beside its final name and renamed into place,
so a reader sees a complete export or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedding.calibration_text import QUERIES, calibration_texts
from embedding.int8_support import Int8Support, versions
from embedding.int8_tokens import INPUTS, BatchTokenizer

log = logging.getLogger(__name__)

RECIPE = "nncf-transformer-smoothquant-float-ends-v2"
"""Changes whenever ``quantise`` changes what it produces: old exports are then not reused."""
CALIBRATION_BATCH = 8
XML = "model.xml"
LOCK = ".export.lock"
"""Held by the process building the exports of a cache directory."""


def calibration_set() -> list[str]:
    """Texts whose activation ranges set the int8 scales: the built-in calibration passages and queries."""
    return [*QUERIES, *calibration_texts()]


def export_key(revision: str, texts: Sequence[str]) -> dict[str, Any]:
    return {
        "model": revision,
        "versions": versions(),
        "recipe": RECIPE,
        "calibration": hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16],
    }


def export_dir(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"openvino-int8-{digest}"


def load_int8_model(
    model_dir: Path,
    revision: str,
    tokenizer: BatchTokenizer,
    support: Int8Support,
    cache_dir: Path | None,
    texts: Sequence[str] | None = None,
) -> tuple[Any, bool]:
    """The quantised OpenVINO model and whether it came from the cache. ``cache_dir`` None: quantised in
    memory, nothing written (tests, a pool without a calibration directory)."""
    ov = support.openvino()
    texts = list(texts if texts is not None else calibration_set())
    key = export_key(revision, texts)
    target = export_dir(cache_dir, key) if cache_dir is not None else None
    if target is not None and (target / XML).is_file():
        try:
            stored = json.loads((target / "key.json").read_text())
            if stored == json.loads(json.dumps(key)):
                return ov.Core().read_model(str(target / XML)), True
            log.warning("int8 export %s was written for another key: exporting again", target)
        except (OSError, ValueError, RuntimeError) as err:
            log.warning("int8 export %s is unreadable (%s): exporting again", target, err)
    model = quantise(model_dir, tokenizer, support, texts)
    if target is not None:
        _save(ov, model, target, key)
    return model, False


def is_cached(cache_dir: Path | None, revision: str) -> bool:
    """Whether the export for ``revision`` (default calibration set) is in ``cache_dir``: ``auto`` offers int8
    only then, so that no run waits for an export it did not ask for."""
    if cache_dir is None:
        return False
    target = export_dir(cache_dir, export_key(revision, calibration_set()))
    try:
        return (target / XML).is_file() and json.loads((target / "key.json").read_text()) == json.loads(
            json.dumps(export_key(revision, calibration_set()))
        )
    except (OSError, ValueError):
        return False


def export_in_background(
    model_dir: Path,
    revision: str,
    max_seq_length: int,
    cache_dir: Path,
    support: Int8Support | None = None,
    *,
    calibrate: str | None = None,
    detach: bool = False,
) -> subprocess.Popen[bytes] | None:
    """Build the export in a child process at the lowest CPU priority, for the next start to offer int8: a
    long-lived process (``ragline serve``) pays it while idle instead of a run paying it while it calibrates.
    A process, not a thread: the caller stops it at will (``terminate``; a half-made export is never renamed
    into place), and OpenVINO's native threads never outlive the interpreter. None when it is cached already
    or cannot run here. ``calibrate``: the embedding settings (JSON) to calibrate afterwards, int8 included,
    so that the next process finds the choice cached instead of starting at the device's default. ``detach``:
    in a session of its own, to outlive a CLI command (and its terminal's Ctrl-C). One child works per cache
    directory at a time (a lock): a second one started meanwhile exits at once."""
    support = support or Int8Support()
    done = is_cached(cache_dir, revision) and (float_dir(cache_dir, revision) / XML).is_file()
    if done or not support.installed():
        return None
    command = [sys.executable, "-m", "embedding.int8_export", str(model_dir), revision, str(max_seq_length)]
    return subprocess.Popen(
        [*command, str(cache_dir), *([calibrate] if calibrate else [])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.nice(19),
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        start_new_session=detach,
    )


def _main(argv: Sequence[str]) -> int:
    model_dir, revision, max_seq_length, cache_dir = Path(argv[0]), argv[1], int(argv[2]), Path(argv[3])
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another process is building it
        return _build(model_dir, revision, max_seq_length, cache_dir, argv[4:])


def _build(model_dir: Path, revision: str, max_seq_length: int, cache_dir: Path, calibrate: Sequence[str]) -> int:
    export_float(model_dir, revision, max_seq_length, cache_dir, Int8Support())  # seconds: the query model's
    load_int8_model(model_dir, revision, BatchTokenizer(model_dir, max_seq_length), Int8Support(), cache_dir)
    if calibrate:  # calibrate each device now that int8 is offered: the choice is cached for the next start
        from embedding.model import EmbeddingSettings
        from embedding.pool import EmbeddingPool

        settings = EmbeddingSettings.model_validate_json(calibrate[0])
        pool = settings.pool.model_copy(update={"calibrate": "at_start", "calibration_dir": cache_dir})
        with EmbeddingPool(settings.model_copy(update={"pool": pool})) as embedder:
            embedder.start()
            embedder.wait_ready(1800)
    return 0


def float_layers(model_dir: Path) -> list[str]:
    """Name patterns of the encoder layers kept in float: the first and the last, where quantisation error
    costs retrieval most (bench/int8.py, 816 known-item queries on the example PDFs: recall@5 -0.009 and
    top-10 overlap 0.939 with every layer in int8, -0.005 and 0.947 with these two in float)."""
    layers = int(json.loads((model_dir / "config.json").read_text())["num_hidden_layers"])
    return [rf".*\.layer\.{i}\..*" for i in sorted({0, layers - 1})]


def convert(model_dir: Path, example: dict[str, Any], support: Int8Support) -> Any:
    """The float32 model as an OpenVINO model, converted from its safetensors (torch, no hub)."""
    ov = support.openvino()
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    inputs = {k: torch.from_numpy(example[k]) for k in INPUTS}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shapes: the converted model is dynamic
        return ov.convert_model(module, example_input=inputs)


FLOAT_RECIPE = "float32-ir-v1"


def float_dir(cache_dir: Path, revision: str) -> Path:
    """Where the float32 OpenVINO model of ``revision`` is kept: the query model's fast path
    (``embedding.query``), exact to float32, loaded without torch or transformers."""
    key = {"model": revision, "versions": versions(), "recipe": FLOAT_RECIPE}
    return cache_dir / f"openvino-float32-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}"


def export_float(model_dir: Path, revision: str, max_seq_length: int, cache_dir: Path, support: Int8Support) -> Path:
    target = float_dir(cache_dir, revision)
    if not (target / XML).is_file():
        example = BatchTokenizer(model_dir, max_seq_length)(["an example to trace the model with"])
        _save(
            support.openvino(),
            convert(model_dir, example, support),
            target,
            {"model": revision, "recipe": FLOAT_RECIPE},
        )
    return target / XML


def quantise(
    model_dir: Path,
    tokenizer: BatchTokenizer,
    support: Int8Support,
    texts: Sequence[str],
    keep_float: Sequence[str] | None = None,
) -> Any:
    """Convert the float32 model from its safetensors (torch, no hub) and quantise it on ``texts``, but for
    the operations matching ``keep_float`` (default: ``float_layers``)."""
    nncf = support.nncf()
    batches = [tokenizer(texts[i : i + CALIBRATION_BATCH]) for i in range(0, len(texts), CALIBRATION_BATCH)]
    converted = convert(model_dir, batches[0], support)
    nncf.set_log_level(logging.WARNING)
    patterns = list(float_layers(model_dir) if keep_float is None else keep_float)
    # NNCF draws progress bars on stdout, where `ragline ... --json` prints its answer: they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        quantised = nncf.quantize(
            converted,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None,
        )
    log.info("quantised %s to int8 with NNCF on %d calibration texts", model_dir.name, len(texts))
    return quantised


def _save(ov: Any, model: Any, target: Path, key: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ov.save_model(model, str(tmp / XML), compress_to_fp16=False)
    (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True))
    try:
        os.replace(tmp, target)  # atomic on one file system; an empty target left by a crash is replaced
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process got there first: its export is as good
        if not (target / XML).is_file():
            raise
    log.info("OpenVINO export cached in %s", target)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
