"""The int8 backend on the real model, OpenVINO and NNCF (the extra ``ragline[int8]``, installed by
``make install``), measured on real chunks of the example PDFs: the gates as pure functions, the runner's
vectors against float32, the export reused from its cache, the calibration choosing int8 only within the
gates, and the missing-extra paths through the import seam."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from connectors.pdf import discover
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from embedding import gates
from embedding.backend_status import backend_status
from embedding.budget import MemoryModel
from embedding.calibrate import DeviceCalibrator
from embedding.calibration_text import QUERIES
from embedding.chunking import ChunkingSettings, chunk_pages
from embedding.devices import Device
from embedding.gates import GateFigures, Gates, KnownItem
from embedding.int8_export import export_in_background, is_cached
from embedding.int8_runner import Int8Runner
from embedding.int8_support import EXTRA, Int8Support, Int8Unavailable
from embedding.model import Embedder, EmbeddingSettings
from embedding.pool import EmbeddingPool
from embedding.pool_settings import PoolSettings
from embedding.precision import CalibrationCache, Measurement, Thresholds, choose
from embedding.runner import Runner, TorchRunner

ROOT = Path(__file__).resolve().parents[2]
CPU = Device(key="cpu", torch_device="cpu", kind="cpu", label="test cpu", threads=2)


# The gates, pure.
def unit(rows: list[list[float]]) -> np.ndarray:
    array = np.array(rows, dtype=np.float32)
    return np.asarray(array / np.linalg.norm(array, axis=1, keepdims=True), dtype=np.float32)


def test_known_items_are_spans_from_the_middle_found_in_every_text_that_holds_them() -> None:
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(words), " ".join(words[10:]), "too short to ask about", " ".join(words[:12])]
    items = gates.known_items(texts, words=4, min_words=8, spans=1)
    # text 0's middle (w13..w16) is also in text 1 (an overlapping chunk); text 1's middle only in 0 and 1
    assert items == [
        KnownItem("w13 w14 w15 w16", 0, frozenset({0, 1})),
        KnownItem("w18 w19 w20 w21", 1, frozenset({0, 1})),
        KnownItem("w4 w5 w6 w7", 3, frozenset({0, 3})),
    ]


def test_recall_and_overlap_on_vectors_made_up() -> None:
    docs = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    queries = unit([[1, 0.1, 0], [0, 0, 1]])
    items = [KnownItem("a", 0, frozenset({0})), KnownItem("b", 1, frozenset({1}))]
    assert gates.recall_at_k(queries, docs, items, k=1) == 0.5  # the second query's nearest is doc 2
    assert gates.recall_at_k(queries, docs, items, k=4) == 1.0
    assert gates.neighbour_overlap(queries, docs, queries, docs) == 1.0


@pytest.mark.parametrize(
    ("figures", "failed"),
    [
        (GateFigures(0.995, 0.97, 0.93, 0.80, 0.80), []),
        (GateFigures(0.995, 0.97, 0.93, 0.79, 0.80), []),  # a drop of exactly 0.01 is within
        (GateFigures(0.995, 0.97, 0.93, 0.85, 0.80), []),  # better than float32 is fine
        (GateFigures(0.995, 0.97, 0.93, 0.78, 0.80), ["recall@5 0.780 vs float32 0.800 (drop > 0.01)"]),
        (GateFigures(0.995, 0.97, 0.89, 0.80, 0.80), ["top-10 overlap 0.890 < 0.9"]),
        (GateFigures(0.985, 0.90, 0.93, 0.80, 0.80), ["mean cosine 0.9850 < 0.99"]),
    ],
)
def test_gate_failures(figures: GateFigures, failed: list[str]) -> None:
    assert gates.failures(figures, Gates()) == failed


def int8_measurement(speed: float, recall: float, overlap: float = 0.93) -> Measurement:
    return Measurement("int8", speed, 0.97, overlap, mean_cosine=0.995, recall=recall, reference_recall=0.80)


@pytest.mark.parametrize(
    ("measured", "chosen", "why"),
    [
        # min cosine 0.97 is below the torch precisions' 0.999: int8 is held to its own gates
        ([int8_measurement(2000, 0.80)], "int8", "2.00x float32"),
        ([int8_measurement(2000, 0.75)], "float32", "int8 recall@5 0.750 vs float32 0.800"),
        ([int8_measurement(2000, 0.80, overlap=0.85)], "float32", "int8 top-10 overlap 0.850 < 0.9"),
        ([int8_measurement(1050, 0.80)], "float32", "int8 1.05x < 1.1x"),
        ([Measurement("int8", 2000, 0.97, 0.93)], "float32", "int8 not measured on known items"),
        ([Measurement("bfloat16", 1500, 0.9995, 0.97), int8_measurement(2000, 0.80)], "int8", "2.00x"),
    ],
)
def test_choose_holds_int8_to_the_gates(measured: list[Measurement], chosen: str, why: str) -> None:
    choice = choose([Measurement("float32", 1000, 1.0, 1.0), *measured], Thresholds())
    assert choice.precision == chosen and why in choice.reason


# The real backend.
@pytest.fixture(scope="module")
def chunks(embedder: Embedder) -> list[str]:
    """Real chunks of the example PDFs (default chunking), as the pipeline embeds them."""
    texts: list[str] = []
    for f in discover([ROOT / "examples" / "pdfs"]).files:
        pages = [(p.number, p.text) for p in parse_pdf(f, PdfSettings()).pages]
        texts += [c.text for c in chunk_pages(pages, embedder.tokenizer, ChunkingSettings(), embedder.max_seq_length)]
    assert len(texts) > 200
    return texts


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("int8-export")


@pytest.fixture(scope="module")
def runner(embedder: Embedder, export_dir: Path) -> Int8Runner:
    """Exported and quantised once for the module, into ``export_dir``."""
    made = Int8Runner(embedder.model_dir, embedder.revision, CPU, embedder.max_seq_length, cache_dir=export_dir)
    made.load()
    assert made.from_cache is False
    return made


def embed_all(run: Runner, texts: Sequence[str], size: int = 32) -> np.ndarray:
    return np.concatenate([run.forward(texts[i : i + size]) for i in range(0, len(texts), size)])


def test_int8_vectors_are_within_the_gates_on_real_chunks(
    embedder: Embedder, runner: Int8Runner, chunks: list[str]
) -> None:
    items = gates.known_items(chunks)
    queries = [*QUERIES, *(item.query for item in items)]
    ref_q, ref_d = embedder.embed(queries), embedder.embed(chunks)
    cand_q, cand_d = embed_all(runner, queries), embed_all(runner, chunks)
    assert cand_d.shape == ref_d.shape and cand_d.dtype == np.float32
    assert np.allclose(np.linalg.norm(cand_d, axis=1), 1.0, atol=1e-5)
    figures = gates.measure(ref_q, ref_d, cand_q, cand_d, items, len(items))
    assert gates.failures(figures, Gates()) == [], figures


def test_second_load_reads_the_cached_export(
    embedder: Embedder, runner: Int8Runner, export_dir: Path, chunks: list[str]
) -> None:
    exports = list(export_dir.glob("openvino-int8-*/model.xml"))
    assert len(exports) == 1
    again = Int8Runner(embedder.model_dir, embedder.revision, CPU, embedder.max_seq_length, cache_dir=export_dir)
    again.load()
    assert again.from_cache is True
    assert np.allclose(again.forward(chunks[:16]), runner.forward(chunks[:16]), atol=1e-6)
    assert list(export_dir.glob("openvino-int8-*/model.xml")) == exports  # nothing written again


def test_an_export_for_another_key_is_not_trusted(embedder: Embedder, export_dir: Path, tmp_path: Path) -> None:
    (source,) = export_dir.glob("openvino-int8-*")
    copy = tmp_path / source.name
    copy.mkdir()
    for f in source.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "key.json").write_text('{"model": "another"}')
    other = Int8Runner(embedder.model_dir, embedder.revision, CPU, embedder.max_seq_length, cache_dir=tmp_path)
    other.load()
    assert other.from_cache is False


class Clocked:
    """A real runner whose time is read from a fake clock: int8 costs half of float32 per text."""

    def __init__(self, inner: Runner, clock: list[float], cost: float) -> None:
        self.inner, self.clock, self.cost = inner, clock, cost

    def load(self) -> None:
        self.inner.load()

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        self.clock[0] += self.cost * len(texts)
        return self.inner.forward(texts)

    def after_oom(self) -> None:
        self.inner.after_oom()

    def memory_model(self, max_seq_length: int) -> MemoryModel:
        return MemoryModel(1000.0, 16_000.0, 0.0, "test")


def calibrator(
    embedder: Embedder, runner: Int8Runner, chunks: list[str], directory: Path, thresholds: Thresholds
) -> tuple[DeviceCalibrator, list[str]]:
    """A calibrator whose cache already holds the int8 export (as after ``ragline serve`` built it)."""
    assert runner.cache_dir is not None
    for export in runner.cache_dir.glob("openvino-int8-*"):
        shutil.copytree(export, directory / export.name, dirs_exist_ok=True)
    clock = [0.0]
    built: list[str] = []

    def make(device: Device, precision: str) -> Runner:
        built.append(precision)
        inner: Runner = (
            runner if precision == "int8" else TorchRunner(Path("unused"), device, precision, model=embedder.model)
        )
        return Clocked(inner, clock, 0.5 if precision == "int8" else 1.0)

    pool = PoolSettings(
        min_cosine=thresholds.min_cosine,
        min_neighbour_overlap=thresholds.min_neighbour_overlap,
        min_speedup=thresholds.min_speedup,
    )
    cal = DeviceCalibrator(
        embedder,
        "auto",
        pool,
        make,
        CalibrationCache(directory),
        texts=chunks,
        queries=QUERIES,
        rounds=1,
        clock=lambda: clock[0],
        cpu_bf16=False,
        gates=thresholds.int8,
    )
    return cal, built


# The choice itself is tested with a recall bar of 0.03: how close the real figures come to the 0.01 is
# a property of the machine (test_int8_vectors_are_within_the_gates_on_real_chunks and bench/int8.py say).
LENIENT = Thresholds(int8=Gates(max_recall_drop=0.03))


def test_auto_chooses_int8_on_real_chunks_and_status_shows_its_gates(
    embedder: Embedder, runner: Int8Runner, chunks: list[str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    cal, built = calibrator(embedder, runner, chunks, home / "calibration", LENIENT)
    calibrated = cal.prepare(CPU)
    assert calibrated.choice.precision == "int8", calibrated.choice.summary()
    assert built == ["float32", "int8", "int8"]  # both measured, then the choice loaded
    (status,) = backend_status(EmbeddingSettings(), home)
    assert (status.device, status.precision, status.backend) == ("cpu", "int8", "openvino-int8")
    assert status.speedup == pytest.approx(2.0) and status.int8 is not None
    measured = next(m for m in calibrated.choice.measurements if m.precision == "int8")
    assert status.int8.top10_overlap == pytest.approx(measured.neighbour_overlap, abs=1e-4)
    assert status.int8.recall_at_5 == pytest.approx(measured.recall or 0.0, abs=1e-4)
    assert "int8 (openvino-int8), 2.00x float32; int8 gates " in status.describe()


@pytest.mark.slow  # a second real export (~15-40 s)
def test_auto_offers_int8_only_once_exported_and_serve_builds_it_in_the_background(
    embedder: Embedder, tmp_path: Path
) -> None:
    """No run waits for an export: without one, auto measures torch precisions only; the background build
    (what ``ragline serve`` starts when warm) caches it for the next start."""
    directory = tmp_path / "calibration"
    cal = DeviceCalibrator(
        embedder,
        "auto",
        PoolSettings(),
        lambda d, p: TorchRunner(Path("unused"), d, p, model=embedder.model),
        CalibrationCache(directory),
        cpu_bf16=False,
    )
    assert cal.choose_precision(CPU).precision == "float32"  # the only candidate: nothing was exported
    assert not is_cached(directory, embedder.revision)
    process = export_in_background(embedder.model_dir, embedder.revision, embedder.max_seq_length, directory)
    assert process is not None
    assert process.wait(600) == 0
    assert is_cached(directory, embedder.revision)
    assert export_in_background(embedder.model_dir, embedder.revision, embedder.max_seq_length, directory) is None


def test_auto_keeps_float32_when_int8_fails_a_gate(
    embedder: Embedder, runner: Int8Runner, chunks: list[str], tmp_path: Path
) -> None:
    strict = Thresholds(int8=Gates(max_recall_drop=0.03, min_mean_cosine=0.99999))
    cal, _ = calibrator(embedder, runner, chunks, tmp_path / "calibration", strict)
    choice = cal.prepare(CPU).choice
    assert choice.precision == "float32" and "mean cosine" in choice.reason and "< 0.99999" in choice.reason
    (status,) = backend_status(EmbeddingSettings(), tmp_path)
    assert status.precision == "float32" and status.int8 is not None


def test_pool_with_precision_int8_embeds_with_the_cached_export(
    embedder: Embedder, runner: Int8Runner, export_dir: Path, chunks: list[str]
) -> None:
    settings = EmbeddingSettings.model_validate({"precision": "int8", "pool": {"calibration_dir": str(export_dir)}})
    with EmbeddingPool(settings, embedder=embedder, devices=[CPU]) as pool:
        vectors = pool.embed(chunks[:24])
        assert pool.stats().devices[0].precision == "int8"
    # The pool packs its own batches: other padding, so int8 rounding differs in the last digits.
    assert np.min(np.sum(vectors * runner.forward(chunks[:24]), axis=1)) > 0.999


_NO_TORCH = """
import sys
from pathlib import Path
from embedding.devices import gpu_driver_present
from embedding.model import EmbeddingSettings
from embedding.pool import EmbeddingPool
settings = EmbeddingSettings.model_validate({"precision": "int8", "pool": {"calibration_dir": sys.argv[1]}})
with EmbeddingPool(settings) as pool:
    vector = pool.embed(["a tide table for the estuary"])[0]
    assert pool.stats().devices[0].precision == "int8"
assert abs(float(vector @ vector) - 1.0) < 1e-4
loaded = sorted(name for name in ("torch", "transformers", "nncf") if name in sys.modules)
print("loaded:", loaded if not gpu_driver_present() else "n/a (a GPU driver is present)")
"""


def test_a_worker_running_the_cached_export_never_imports_torch(runner: Int8Runner, export_dir: Path) -> None:
    """Its import (1-2 s, holding the GIL) would delay a running system's first batch: the int8 worker needs
    OpenVINO and the tokenizer only (NNCF, which imports torch, is for making an export)."""
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(export_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("loaded: []", "loaded: n/a (a GPU driver is present)"), done.stdout


# Without the extra.
def missing(message: str) -> Int8Support:
    def importer(name: str) -> ModuleType:
        raise ImportError(f"{message} ({name})")

    return Int8Support(importer=importer)


def test_explicit_int8_without_the_extra_names_it(embedder: Embedder) -> None:
    cal = DeviceCalibrator(
        embedder,
        "int8",
        PoolSettings(),
        lambda d, p: pytest.fail("nothing to build"),
        CalibrationCache(None),
        int8=missing("no openvino here"),
    )
    with pytest.raises(Int8Unavailable, match=r"needs the optional extra ragline\[int8\]"):
        cal.prepare(CPU)
    with pytest.raises(Int8Unavailable, match=r"pip install 'ragline\[int8\]'"):
        Int8Runner(embedder.model_dir, "r", CPU, 256, support=missing("gone")).load()
    assert EXTRA == "ragline[int8]"


def test_auto_without_the_extra_does_not_offer_int8_and_says_so_once(
    embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    built: list[str] = []

    def make(device: Device, precision: str) -> Runner:
        built.append(precision)
        return TorchRunner(embedder.model_dir, device, precision, model=embedder.model)

    caplog.set_level(logging.INFO, logger="embedding.int8_support")
    for _ in range(2):
        cal = DeviceCalibrator(
            embedder,
            "auto",
            PoolSettings(),
            make,
            CalibrationCache(None),
            cpu_bf16=False,
            int8=missing("auto-once test"),
        )
        choice = cal.prepare(CPU).choice
        assert (choice.precision, choice.reason) == ("float32", "the only candidate on this device")
    assert built == ["float32", "float32"]
    logged = [r.getMessage() for r in caplog.records if "auto-once test" in r.getMessage()]
    assert len(logged) == 1 and "not offered" in logged[0] and EXTRA in logged[0]


def test_plain_embedder_runs_int8(embedder: Embedder, runner: Int8Runner, export_dir: Path) -> None:
    settings = EmbeddingSettings.model_validate({"precision": "int8", "pool": {"calibration_dir": str(export_dir)}})
    plain = Embedder(settings)
    texts = ["how do bees tell others where flowers are", "autovacuum removes dead rows"]
    assert np.allclose(plain.embed(texts), runner.forward(texts), atol=1e-5)


def test_run_artifact_shows_the_backend_line(tmp_path: Path) -> None:
    from embedding.backend_status import record_choice
    from embedding.precision import PrecisionChoice
    from flows import artifacts
    from flows.counts import Counts

    measured = [Measurement("float32", 1000, 1.0, 1.0), int8_measurement(1800, 0.80)]
    record_choice(tmp_path / "calibration", EmbeddingSettings().model, CPU, choose(measured, Thresholds()))
    lines = [s.describe() for s in backend_status(EmbeddingSettings(), tmp_path)]
    text = artifacts.counts_markdown("docs", "pdf", Counts(seen=1, committed=1), 2.0, backends=lines)
    assert "Embedding: cpu: int8 \\(openvino-int8\\), 1.80x float32; int8 gates passed: recall@5 0.800" in text
    assert isinstance(PrecisionChoice.from_json(choose(measured, Thresholds()).to_json()), PrecisionChoice)
