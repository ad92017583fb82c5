"""GPU readiness of the embedding pool, in one command on a bare CUDA machine: torch and sentence-transformers
installed, no network, no ragline install, no model package. It carries itself: the repository root goes on
``sys.path`` and a randomly initialised MiniLM is built from the configuration and vocabulary in
``bench/gpu_check_model/`` (throughput and memory depend on the model's shape, not on its weights).

Measured side by side in one run, on the same synthetic texts of 100-250 tokens:

- tokens/s of bare ``SentenceTransformer.encode`` (batch 32, its default) at float32, float16 and bfloat16,
  against ragline's pool at the same precisions, and the pool with two workers on the one device;
- VRAM: free and total (``torch.cuda.mem_get_info``), the pool's usable memory and token budget (its memory
  model, measured as the pool measures it), the predicted peak of a full batch against the measured one
  (``max_memory_allocated``);
- an out-of-memory forced with ``torch.cuda.set_per_process_memory_fraction`` below the pool's first batch, and
  the pool's recovery: each shrink of the budget, the run completing, its vectors against an unforced run.

``embedding.pool`` needs pydantic, which a bare CUDA image may lack. There the check runs the pool's own parts
instead (``runner.TorchRunner``, ``budget.take_batch``, ``budget.BudgetController``, ``devices.is_oom``), driven
as ``EmbeddingPool`` drives them, and says so; ``--pieces`` forces that path where pydantic is installed.

``--device cpu`` runs a small smoke version on the CPU (float32 and bfloat16, an out-of-memory simulated by a
runner that raises torch's OutOfMemoryError above a batch size) so that the script is tested without a GPU.
A watchdog ends the run at ``--time-limit`` seconds (default 465) with the results so far; sections that
would not fit in the time left are skipped with a note.

    python bench/gpu_check.py [--device cuda|cpu] [--out gpu_check.json] [--texts N] [--rounds N] [--pieces]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # ragline is not installed on the machine this is meant for

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from embedding.budget import MemoryModel
    from embedding.devices import Device
    from embedding.runner import Runner

MODEL_FILES = ROOT / "bench" / "gpu_check_model"
START = time.monotonic()
MAX_BATCH_ITEMS = 512
"""``PoolSettings.max_batch_items``' default, for the pieces path (which cannot import the settings)."""
MEMORY_FRACTION = 0.7
"""``PoolSettings.memory_fraction``' default: the share of free memory one batch may use."""
REGROW_AFTER, REGROW_FACTOR, MAX_ATTEMPTS = 8, 1.25, 3
"""``PoolSettings``' defaults for the budget's regrowth and a chunk's tries."""

log = logging.getLogger("gpu_check")


@dataclass(frozen=True)
class Sizes:
    texts: int
    rounds: int
    oom_texts: int
    time_limit: float


SIZES = {
    "cuda": Sizes(texts=8000, rounds=3, oom_texts=3000, time_limit=465.0),
    "cpu": Sizes(texts=48, rounds=1, oom_texts=24, time_limit=110.0),
}


class Report:
    """The results as they come, written as JSON at the end or by the watchdog when time runs out."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {"skipped": [], "sections_s": {}}
        self.lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self.lock:
            self.data[key] = value

    def skip(self, note: str) -> None:
        print(f"  skipped: {note}", flush=True)
        with self.lock:
            self.data["skipped"].append(note)

    def write(self, **extra: Any) -> None:
        with self.lock:
            data = {**self.data, **extra, "elapsed_s": round(time.monotonic() - START, 1)}
            self.out.write_text(json.dumps(data, indent=2, default=str) + "\n")


class Deadline:
    """The soft limit that sections plan by, and the hard one a watchdog enforces."""

    def __init__(self, limit: float, report: Report) -> None:
        self.limit = limit
        self.report = report
        self.section = "start-up"
        self._timer = threading.Timer(max(1.0, limit - self.elapsed()), self._abort)
        self._timer.daemon = True

    @staticmethod
    def elapsed() -> float:
        return time.monotonic() - START

    def left(self) -> float:
        return self.limit - self.elapsed()

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _abort(self) -> None:
        message = f"time limit of {self.limit:.0f} s reached during {self.section!r}: stopped, results so far kept"
        print(f"\n{message}", file=sys.stderr, flush=True)
        if self.report.lock.acquire(timeout=5):
            self.report.lock.release()
            self.report.write(aborted=message)
        os._exit(124)

    @contextmanager
    def run(self, name: str, estimate_s: float) -> Iterator[bool]:
        """Yields False (and notes the skip) when ``estimate_s`` does not fit in the time left (a section
        that must run gives 0)."""
        if estimate_s and self.left() < estimate_s:
            self.report.skip(f"{name}: needs ~{estimate_s:.0f} s, {self.left():.0f} s left")
            yield False
            return
        self.section = name
        print(f"\n== {name}", flush=True)
        start = time.monotonic()
        try:
            yield True
        except Exception:  # recorded, and the run exits non-zero; the next sections still run
            if not estimate_s:
                raise
            trace = traceback.format_exc()
            print(f"  FAILED: {name}\n{trace}", file=sys.stderr, flush=True)
            with self.report.lock:
                self.report.data.setdefault("failed", {})[name] = trace.strip().splitlines()[-1]
        self.report.data["sections_s"][name] = round(time.monotonic() - start, 1)


# The model and the texts.


def build_model(directory: Path) -> Path:
    """A MiniLM-L6 of random weights (seed 0) with the packaged model's configuration, tokenizer and pooling,
    saved as a sentence-transformers directory (``tokenizer.json`` included, which ragline's tokenizer reads)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    model_dir = directory / "minilm-random"
    shutil.copytree(MODEL_FILES, model_dir, ignore=shutil.ignore_patterns("README.md"))
    torch.manual_seed(0)
    BertModel(BertConfig.from_json_file(str(model_dir / "config.json"))).save_pretrained(str(model_dir))
    loaded = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    loaded.tokenizer.save_pretrained(str(model_dir))
    return model_dir


def load_tokenizer(model_dir: Path, window: int) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(window)
    return tokenizer


def synthetic_texts(count: int, low: int, high: int, seed: int = 7) -> list[str]:
    """Texts of ``low``-``high`` tokens: words of the vocabulary (one WordPiece token each) in sentences of
    8-20 words, each full stop a token too; lengths spread like chunks of prose, no text twice."""
    words = [w for w in (MODEL_FILES / "vocab.txt").read_text().split() if w.isalpha() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = rng.randint(low, high)
        tokens: list[str] = []
        while len(tokens) < n:
            tokens.extend([*rng.choices(words, k=rng.randint(8, 20)), "."])
        texts.append(" ".join(tokens[:n]).replace(" .", "."))
    return texts


def token_counts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text with the special tokens, clipped to the window (what is embedded)."""
    return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]


# Engines: what embeds a list of texts, timed alike.


@dataclass
class EngineStats:
    """Totals of a pool (both paths) over its life: batches, budget, out-of-memory history."""

    batches: int = 0
    max_batch_chunks: int = 0
    mean_batch_chunks: float = 0.0
    budget_tokens: int | None = None
    budget_ceiling: int | None = None
    ooms: int = 0
    shrinks: int = 0
    regrows: int = 0


class Engine(Protocol):
    name: str
    precision: str
    workers: int

    def embed(self, texts: list[str], counts: list[int]) -> np.ndarray: ...

    def stats(self) -> EngineStats | None: ...

    def close(self) -> None: ...


class ProbedRunner:
    """A pool runner that keeps the memory model it measured, and raises torch's OutOfMemoryError for batches
    above ``fail_above`` padded tokens (the CPU stand-in for a GPU running out of memory)."""

    def __init__(self, inner: Runner, tokenizer: Tokenizer, fail_above: int | None = None) -> None:
        self.inner = inner
        self.tokenizer = tokenizer
        self.fail_above = fail_above
        self.memory: MemoryModel | None = None

    def load(self) -> None:
        self.inner.load()

    def forward(self, texts: Sequence[str]) -> np.ndarray:
        if self.fail_above is not None:
            padded = len(texts) * max(token_counts(self.tokenizer, texts))
            if padded > self.fail_above:
                import torch

                raise torch.OutOfMemoryError(f"simulated: {padded} padded tokens > {self.fail_above}")
        return self.inner.forward(texts)

    def after_oom(self) -> None:
        self.inner.after_oom()

    def memory_model(self, max_seq_length: int) -> MemoryModel:
        self.memory = self.inner.memory_model(max_seq_length)
        return self.memory


class EncodeEngine:
    """Bare ``SentenceTransformer.encode``, the model cast to the precision as a user would."""

    def __init__(self, model_dir: Path, device: str, precision: str, batch_size: int = 32) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.name = f"encode {precision} (batch {batch_size})"
        self.precision, self.workers, self.batch_size = precision, 1, batch_size
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.model: Any = model.to(getattr(torch, precision)).eval()

    def embed(self, texts: list[str], counts: list[int]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors.float().cpu().numpy(), dtype=np.float32)

    def stats(self) -> EngineStats | None:
        return None

    def close(self) -> None:
        self.model = None


@dataclass
class Setup:
    """What every pool engine is built from."""

    model_dir: Path
    device: Device
    tokenizer: Tokenizer
    window: int
    dimension: int


class PoolEngine:
    """ragline's ``EmbeddingPool`` with the precision configured, ``workers`` workers on one device, no
    calibration cache; the runners and the memory probe are wrapped only to read what the pool decided."""

    def __init__(self, setup: Setup, precision: str, workers: int = 1, fail_above: int | None = None) -> None:
        from embedding.devices import default_probe
        from embedding.model import EmbeddingSettings
        from embedding.pool import EmbeddingPool
        from embedding.runner import TorchRunner

        self.name = f"pool {precision}" + (f", {workers} workers" if workers > 1 else "")
        self.precision, self.workers = precision, workers
        self.runners: list[ProbedRunner] = []
        self.usable: list[float] = []

        def runner(device: Device, precision: str) -> Runner:
            probed = ProbedRunner(TorchRunner(setup.model_dir, device, precision), setup.tokenizer, fail_above)
            self.runners.append(probed)
            return probed

        settings = EmbeddingSettings.model_validate(
            {"model": str(setup.model_dir), "device": setup.device.torch_device, "precision": precision}
        )

        def probe(device: Device) -> int:
            free = default_probe(device)
            self.usable.append(free * settings.pool.memory_fraction)  # what the pool takes as usable
            return free

        self.pool = EmbeddingPool(
            settings, devices=worker_devices(setup.device, workers), probe=probe, runner_factory=runner
        )
        self.pool.wait_ready(timeout=300)
        failed = [d for d in self.pool.stats().devices if d.state != "ready"]
        if failed:
            raise RuntimeError(f"pool workers not ready: {[(d.key, d.state, d.error) for d in failed]}")

    @property
    def memory(self) -> MemoryModel | None:
        return self.runners[0].memory if self.runners else None

    def embed(self, texts: list[str], counts: list[int]) -> np.ndarray:
        return self.pool.embed(texts, token_counts=counts)

    def stats(self) -> EngineStats:
        devices = self.pool.stats().devices
        batches = sum(d.batches for d in devices)
        return EngineStats(
            batches=batches,
            max_batch_chunks=max(d.max_batch_chunks for d in devices),
            mean_batch_chunks=sum(d.chunks for d in devices) / batches if batches else 0.0,
            budget_tokens=devices[0].budget_tokens,
            budget_ceiling=devices[0].budget_ceiling,
            ooms=sum(d.ooms for d in devices),
            shrinks=sum(d.shrinks for d in devices),
            regrows=sum(d.regrows for d in devices),
        )

    def close(self) -> None:
        self.pool.close()


class PiecesEngine:
    """The pool's batching and out-of-memory path from its own parts, for a machine where ``embedding.pool``
    cannot be imported: chunks sorted longest first, batches taken by ``take_batch`` within
    ``min(controller.limit, memory model)``, a batch that runs out of memory put back at the head and the
    budget halved by ``BudgetController.on_oom``, one thread per worker. Unlike the pool it does not probe free
    memory again after a regrowth."""

    def __init__(self, setup: Setup, precision: str, workers: int = 1, fail_above: int | None = None) -> None:
        from embedding.budget import BudgetController
        from embedding.devices import batch_token_cap, default_probe
        from embedding.runner import TorchRunner

        self.name = f"pool pieces {precision}" + (f", {workers} workers" if workers > 1 else "")
        self.precision, self.workers, self.setup = precision, workers, setup
        self.runners = [
            ProbedRunner(TorchRunner(setup.model_dir, setup.device, precision), setup.tokenizer, fail_above)
            for _ in range(workers)
        ]
        for runner in self.runners:
            runner.load()
            runner.memory_model(setup.window)
        memory = self.memory
        assert memory is not None
        self.usable = [default_probe(setup.device) * MEMORY_FRACTION]
        ceiling = max(1, min(batch_token_cap(None, setup.device), memory.max_padded_tokens(self.usable[0], 1)))
        self.controllers = [BudgetController(ceiling, REGROW_AFTER, REGROW_FACTOR) for _ in range(workers)]
        self.events: list[str] = []
        """Each out-of-memory, as the pool logs it."""
        self.batch_sizes: list[int] = []
        self.ooms = 0
        self._lock = threading.Lock()

    @property
    def memory(self) -> MemoryModel | None:
        return self.runners[0].memory if self.runners else None

    def embed(self, texts: list[str], counts: list[int]) -> np.ndarray:
        queue = deque(sorted(range(len(texts)), key=lambda i: -counts[i]))
        out = np.zeros((len(texts), self.setup.dimension), dtype=np.float32)
        attempts = [0] * len(texts)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=self._work, args=(k, texts, counts, queue, out, attempts, errors), daemon=True)
            for k in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"pool pieces failed: {errors[0]!r}") from errors[0]
        return out

    def _work(
        self,
        k: int,
        texts: list[str],
        counts: list[int],
        queue: deque[int],
        out: np.ndarray,
        attempts: list[int],
        errors: list[BaseException],
    ) -> None:
        from embedding.budget import take_batch
        from embedding.devices import is_oom

        runner, controller, memory = self.runners[k], self.controllers[k], self.memory
        assert memory is not None
        if self.setup.device.kind == "cuda":
            import torch

            torch.cuda.set_device(self.setup.device.torch_device)

        def budget(length: int) -> int:
            return max(1, min(controller.limit, memory.max_padded_tokens(self.usable[0], length)))

        while True:
            with self._lock:
                if not queue or errors:
                    return
                n = take_batch((counts[i] for i in queue), budget, MAX_BATCH_ITEMS)
                batch = [queue.popleft() for _ in range(n)]
            padded = n * max(counts[i] for i in batch)
            oom: str | None = None
            try:
                vectors = runner.forward([texts[i] for i in batch])
            except Exception as err:  # noqa: BLE001  (not lost: embed raises it)
                if not is_oom(err):
                    with self._lock:
                        errors.append(err)
                    return
                oom = f"{type(err).__name__}: {err}"  # not the error: its frames hold the batch's tensors
            if oom is None:
                out[batch] = vectors
                with self._lock:
                    self.batch_sizes.append(n)
                    controller.on_success()
                continue
            runner.after_oom()
            with self._lock:
                self.ooms += 1
                before = controller.limit
                after = controller.on_oom(padded)
                self.events.append(
                    f"out of memory on {self.setup.device.key} with {n} chunks ({padded} padded tokens): "
                    f"budget {before} -> {after} padded tokens"
                )
                if n == 1:
                    attempts[batch[0]] += 1
                    if attempts[batch[0]] >= MAX_ATTEMPTS:
                        errors.append(RuntimeError(f"one chunk of {padded} tokens does not fit: {oom}"))
                        return
                queue.extendleft(reversed(batch))

    def stats(self) -> EngineStats:
        sizes = self.batch_sizes
        return EngineStats(
            batches=len(sizes),
            max_batch_chunks=max(sizes, default=0),
            mean_batch_chunks=sum(sizes) / len(sizes) if sizes else 0.0,
            budget_tokens=self.controllers[0].limit,
            budget_ceiling=self.controllers[0].ceiling,
            ooms=self.ooms,
            shrinks=sum(c.shrinks for c in self.controllers),
            regrows=sum(c.regrows for c in self.controllers),
        )

    def close(self) -> None:
        self.runners = []


def worker_devices(device: Device, workers: int) -> list[Device]:
    """``workers`` pool devices on one torch device: keys must differ (``cuda:0``, ``cuda:0#1``), and CPU workers
    share the usable CPUs as the pool's discovery would share them."""
    from dataclasses import replace

    from embedding.devices import usable_cpus

    threads = max(1, usable_cpus() // workers) if device.kind == "cpu" else None
    return [replace(device, key=device.key if k == 0 else f"{device.key}#{k}", threads=threads) for k in range(workers)]


PoolFactory = Callable[..., "PoolEngine | PiecesEngine"]


def pool_factory(force_pieces: bool) -> tuple[PoolFactory, str]:
    """The real pool where it imports, else its pieces; with the reason for the report."""
    if force_pieces:
        return PiecesEngine, "pool pieces (forced by --pieces)"
    try:
        import embedding.pool  # noqa: F401  (only whether it imports: pydantic may be missing)
    except ImportError as err:
        return PiecesEngine, f"pool pieces: embedding.pool does not import here ({err})"
    return PoolEngine, "embedding.pool.EmbeddingPool"


@contextmanager
def oom_log() -> Iterator[list[str]]:
    """The pool's out-of-memory warnings while the block runs (its log is the record of each shrink)."""
    lines: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "out of memory" in record.getMessage():
                lines.append(record.getMessage().split(" (shrink")[0])  # the error's text is long

    sink, pool_log = Sink(logging.WARNING), logging.getLogger("embedding.pool")
    pool_log.addHandler(sink)
    pool_log.propagate = False  # printed once, by the report
    try:
        yield lines
    finally:
        pool_log.removeHandler(sink)
        pool_log.propagate = True


# Measurements.


def agreement(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Cosine of each vector to its reference; also after removing the reference's mean, since a random
    model's vectors all lie close together (raw cosines near 1 would hide a swapped order)."""
    mean = reference.mean(axis=0)
    a, b = vectors - mean, reference - mean
    centred = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    raw = (vectors * reference).sum(axis=1)
    return {"min_cosine": float(raw.min()), "min_centred_cosine": float(centred.min())}


@dataclass
class Timing:
    engine: Engine
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    vectors: np.ndarray | None = None


def time_engines(
    engines: list[Engine], texts: list[str], counts: list[int], rounds: int, device: Device, deadline: Deadline
) -> tuple[list[Timing], int]:
    """Rounds interleaved, so that noise hits every engine alike; rounds stop early where another would not
    fit in the time left (keeping ``reserve_s`` for the sections after)."""
    import torch

    timings = [Timing(e) for e in engines]
    for timing in timings:  # warm-up: kernels chosen, caches filled
        timing.engine.embed(texts[:64], counts[:64])
    done = 0
    for r in range(rounds):
        start = time.monotonic()
        for timing in timings:
            if device.kind == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device.torch_device)
                base = torch.cuda.memory_allocated(device.torch_device)
            t0 = time.perf_counter()
            vectors = timing.engine.embed(texts, counts)
            timing.seconds.append(time.perf_counter() - t0)
            if device.kind == "cuda":
                timing.peak_bytes = max(timing.peak_bytes, torch.cuda.max_memory_allocated(device.torch_device) - base)
            timing.vectors = vectors
        done += 1
        deadline.report.put("throughput", throughput_rows(timings, sum(counts), done))  # kept if time runs out
        took = time.monotonic() - start
        print(f"  round {r + 1}: {took:.1f} s", flush=True)
        if r + 1 < rounds and deadline.left() < took * 1.3 + reserve_s(device):
            deadline.report.skip(f"throughput rounds {r + 2}-{rounds}: {took:.0f} s each, {deadline.left():.0f} s left")
            break
    return timings, done


def reserve_s(device: Device) -> float:
    """Time kept for the sections after the throughput rounds."""
    return 60.0 if device.kind == "cuda" else 15.0


def describe_memory(engine: PoolEngine | PiecesEngine, peak_bytes: int, lengths: Sequence[int]) -> dict[str, Any]:
    """The pool's view of memory (usable bytes, memory model, budget) against what a full batch took."""
    stats = engine.stats()
    memory = engine.memory
    longest = max(lengths)
    row: dict[str, Any] = {
        "engine": engine.name,
        "usable_mib": round(engine.usable[0] / 2**20, 1) if engine.usable else None,
        "budget_ceiling_tokens": stats.budget_ceiling,
        "budget_now_tokens": stats.budget_tokens,
        "max_batch_chunks": stats.max_batch_chunks,
        "mean_batch_chunks": round(stats.mean_batch_chunks, 1),
        "measured_peak_mib": round(peak_bytes / 2**20, 1) if peak_bytes else None,
    }
    if memory is not None:
        full = max(1, (stats.budget_ceiling or 1) // longest)
        row["memory_model"] = asdict(memory)
        row["memory_only_budget_tokens"] = (
            memory.max_padded_tokens(engine.usable[0], longest) if engine.usable else None
        )
        row["predicted_full_batch_mib"] = round(memory.bytes_for(full, longest) / 2**20, 1)
        if peak_bytes:
            row["measured_over_predicted"] = round(peak_bytes / memory.bytes_for(full, longest), 2)
    return row


def cuda_memory(device: Device) -> dict[str, float]:
    import torch

    free, total = torch.cuda.mem_get_info(device.torch_device)
    return {
        "free_mib": round(free / 2**20, 1),
        "total_mib": round(total / 2**20, 1),
        "allocated_mib": round(torch.cuda.memory_allocated(device.torch_device) / 2**20, 1),
        "reserved_mib": round(torch.cuda.memory_reserved(device.torch_device) / 2**20, 1),
    }


def force_oom(
    make_pool: PoolFactory,
    setup: Setup,
    precision: str,
    texts: list[str],
    counts: list[int],
    reference: np.ndarray,
) -> dict[str, Any]:
    """Run the pool where its first batch does not fit: on CUDA the process's memory capped below it with
    ``set_per_process_memory_fraction``, on the CPU a runner that raises OutOfMemoryError above a quarter of
    the budget. The budget must shrink, every chunk be embedded, and the vectors match an unforced run."""
    import torch

    device = setup.device
    cuda = device.kind == "cuda"
    longest = max(counts)
    fail_above = None
    if not cuda:
        from embedding.devices import batch_token_cap

        fail_above = batch_token_cap(None, device) // 4
    engine = make_pool(setup, precision, 1, fail_above)
    result: dict[str, Any] = {"engine": engine.name, "texts": len(texts), "tokens": sum(counts)}
    try:
        ceiling = engine.stats().budget_ceiling or 1
        result["budget_before_tokens"] = ceiling
        if cuda:
            memory = engine.memory
            assert memory is not None
            first = memory.bytes_for(max(1, ceiling // longest), longest)
            torch.cuda.empty_cache()
            total = torch.cuda.mem_get_info(device.torch_device)[1]
            reserved = torch.cuda.memory_reserved(device.torch_device)
            allowed = reserved + max(first / 3, 32 * 2**20)
            fraction = allowed / total
            result.update(
                how=f"set_per_process_memory_fraction({fraction:.5f}) of {total / 2**20:.0f} MiB",
                allowed_mib=round(allowed / 2**20, 1),
                reserved_before_mib=round(reserved / 2**20, 1),
                predicted_first_batch_mib=round(first / 2**20, 1),
            )
            torch.cuda.set_per_process_memory_fraction(fraction, device.torch_device)
            torch.cuda.reset_peak_memory_stats(device.torch_device)
        else:
            result["how"] = f"simulated: the runner raises torch.OutOfMemoryError above {fail_above} padded tokens"
        start = time.perf_counter()
        try:
            with oom_log() as lines:
                vectors = engine.embed(texts, counts)
        finally:
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, device.torch_device)
        result["seconds"] = round(time.perf_counter() - start, 2)
        if cuda:
            result["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device.torch_device) / 2**20, 1)
        figures = asdict(engine.stats())
        figures["budget_after_tokens"] = figures.pop("budget_tokens")
        figures["mean_batch_chunks"] = round(figures["mean_batch_chunks"], 1)
        del figures["budget_ceiling"]  # budget_before_tokens
        events = engine.events if isinstance(engine, PiecesEngine) else lines
        result.update(
            completed=True,
            events=events[:20],
            **figures,
            **agreement(vectors, reference),
        )
        result["recovered"] = bool(figures["ooms"] and result["min_centred_cosine"] > 0.99)
    finally:
        engine.close()
    return result


# The report.


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, aligned: readable here and pasted as it is into docs/benchmarks.md."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def environment(device: Device) -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "device": device.label,
        "cpus": os.cpu_count(),
    }
    if device.kind == "cuda":
        env["cuda"] = torch.version.cuda
        env["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return env


def resolve_device(name: str) -> Device:
    """The device to check; exits with a message where CUDA is asked for and there is none."""
    from embedding.devices import Device, cpu_label

    if name == "cpu":
        return Device("cpu", "cpu", "cpu", cpu_label())
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise SystemExit(
            "gpu_check: no CUDA device is visible to torch "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run with --device cpu for the smoke version"
        )
    torch_device = name if ":" in name else "cuda:0"
    props = torch.cuda.get_device_properties(torch_device)
    label = f"{props.name} sm_{props.major}{props.minor} {props.total_memory >> 20} MiB"
    return Device(torch_device, torch_device, "cuda", label)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a short smoke version)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON results")
    parser.add_argument("--texts", type=int, help="texts per run (default 8000 on CUDA, 48 on the CPU)")
    parser.add_argument("--rounds", type=int, help="interleaved timed rounds (default 3 on CUDA, 1 on the CPU)")
    parser.add_argument("--min-tokens", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=250)
    parser.add_argument("--time-limit", type=float, help="seconds for the whole run (default 465 on CUDA, 110 on CPU)")
    parser.add_argument("--pieces", action="store_true", help="use the pool's pieces even where embedding.pool imports")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    defaults = SIZES["cpu" if args.device == "cpu" else "cuda"]
    sizes = Sizes(
        texts=args.texts or defaults.texts,
        rounds=args.rounds or defaults.rounds,
        oom_texts=min(args.texts or defaults.oom_texts, defaults.oom_texts),
        time_limit=args.time_limit or defaults.time_limit,
    )
    device = resolve_device(args.device)  # exits here, before any file is written, where CUDA is missing
    report = Report(args.out)
    deadline = Deadline(sizes.time_limit, report)
    deadline.start()
    try:
        run_checks(args, device, sizes, report, deadline)
    finally:
        deadline.cancel()
        report.write()
    print(f"\nresults: {args.out} ({Deadline.elapsed():.0f} s in all)")
    problems = list(report.data.get("failed", {}))
    if "oom" in report.data and not report.data["oom"].get("recovered"):
        problems.append("the pool did not recover from the forced out-of-memory")
    if problems:
        print(f"gpu_check: failed: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def run_checks(args: argparse.Namespace, device: Device, sizes: Sizes, report: Report, deadline: Deadline) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    make_pool, mode = pool_factory(args.pieces)
    env = environment(device)
    report.put("environment", env)
    report.put("mode", mode)
    report.put("sizes", asdict(sizes))
    print(f"gpu_check on {device.label}: torch {env['torch']}, sentence-transformers {env['sentence_transformers']}")
    print(f"pool: {mode}")
    precisions = ["float32", "float16"] if device.kind == "cuda" else ["float32"]
    if device.kind == "cpu" or env.get("bf16_supported"):
        precisions.append("bfloat16")
    fast = "float16" if device.kind == "cuda" else "float32"

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        with deadline.run("model and texts", 0):
            model_dir = build_model(Path(tmp))
            window = int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
            dimension = int(
                json.loads((model_dir / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"]
            )
            tokenizer = load_tokenizer(model_dir, window)
            texts = synthetic_texts(sizes.texts, args.min_tokens - 2, args.max_tokens - 2)
            counts = token_counts(tokenizer, texts)
            setup = Setup(model_dir, device, tokenizer, window, dimension)
            lengths = {
                "texts": len(texts),
                "tokens": sum(counts),
                "min": min(counts),
                "median": int(statistics.median(counts)),
                "max": max(counts),
                "window": window,
            }
            report.put("corpus", lengths)
            print(f"  {lengths['texts']} texts, {lengths['tokens']} tokens, {lengths['min']}-{lengths['max']} each")
        if device.kind == "cuda":
            report.put("memory_at_start", cuda_memory(device))

        engines: list[Engine] = []
        with deadline.run("loading engines", 30 if device.kind == "cuda" else 25) as go:
            if go:
                makers: list[tuple[str, Callable[[], Engine]]] = [
                    *(
                        (f"encode {p}", functools.partial(EncodeEngine, model_dir, device.torch_device, p))
                        for p in precisions
                    ),
                    *((f"pool {p}", functools.partial(make_pool, setup, p)) for p in precisions),
                    (f"pool {fast}, 2 workers", functools.partial(make_pool, setup, fast, 2)),
                ]
                for label, make in makers:
                    engine = load_engine(label, make, report)
                    if engine is not None:
                        engines.append(engine)
                if device.kind == "cuda":
                    report.put("memory_engines_loaded", cuda_memory(device))

        timings: list[Timing] = []
        estimate = 30 if device.kind == "cuda" else 15
        with deadline.run("throughput", estimate) as go:
            if go and engines:
                timings, rounds = time_engines(engines, texts, counts, sizes.rounds, device, deadline)
                report.put("throughput", throughput_rows(timings, sum(counts), rounds))
                print_throughput(report.data["throughput"])
        by_name = {t.engine.name: t for t in timings}

        with deadline.run("vram", 1) as go:
            if go and timings:
                rows = [
                    describe_memory(t.engine, t.peak_bytes, counts)
                    for t in timings
                    if isinstance(t.engine, PoolEngine | PiecesEngine)
                ]
                report.put("vram", rows)
                print_vram(rows, device)
        for engine in engines:
            engine.close()
        engines.clear()
        if device.kind == "cuda":
            torch.cuda.empty_cache()

        with deadline.run("forced out-of-memory", 45 if device.kind == "cuda" else 15) as go:
            if go:
                n = min(sizes.oom_texts, len(texts))
                pool_fast = next((t for t in timings if t.engine.name.endswith(f" {fast}")), None)
                reference = pool_fast.vectors[:n] if pool_fast and pool_fast.vectors is not None else None
                if reference is None:
                    reference = EncodeEngine(model_dir, device.torch_device, fast).embed(texts[:n], counts[:n])
                oom = force_oom(make_pool, setup, fast, texts[:n], counts[:n], reference)
                report.put("oom", oom)
                print_oom(oom)

        one = by_name.get(f"pool {fast}") or by_name.get(f"pool pieces {fast}")
        two = by_name.get(f"pool {fast}, 2 workers") or by_name.get(f"pool pieces {fast}, 2 workers")
        if one and two:
            ratio = statistics.median(one.seconds) / statistics.median(two.seconds)
            report.put("two_workers", {"precision": fast, "two_over_one": round(ratio, 3)})
            print(f"\ntwo workers on {device.key} at {fast}: {ratio:.2f}x one worker")


def load_engine(label: str, make: Callable[[], Engine], report: Report) -> Engine | None:
    """One engine that fails to load is recorded and left out; the others are still measured."""
    try:
        return make()
    except Exception as err:  # noqa: BLE001  (recorded in the report; the run exits non-zero)
        print(f"  FAILED to load {label}: {err!r}", file=sys.stderr, flush=True)
        with report.lock:
            report.data.setdefault("failed", {})[f"load {label}"] = repr(err)
        return None


def throughput_rows(timings: list[Timing], tokens: int, rounds: int) -> list[dict[str, Any]]:
    reference = next((t for t in timings if t.engine.name.startswith("encode float32")), timings[0])
    base = tokens / statistics.median(reference.seconds)
    rows = []
    for t in timings:
        rate = tokens / statistics.median(t.seconds)
        row: dict[str, Any] = {
            "engine": t.engine.name,
            "precision": t.engine.precision,
            "workers": t.engine.workers,
            "tokens_per_s": round(rate),
            "x_encode_float32": round(rate / base, 2),
            "seconds": [round(s, 3) for s in t.seconds],
            "rounds": rounds,
            "peak_mib": round(t.peak_bytes / 2**20, 1) if t.peak_bytes else None,
        }
        if t.vectors is not None and reference.vectors is not None:
            row.update({k: round(v, 5) for k, v in agreement(t.vectors, reference.vectors).items()})
        rows.append(row)
    return rows


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print_table(
        ["engine", "tokens/s", "x encode fp32", "min cos", "min centred cos", "peak MiB"],
        [
            [
                r["engine"],
                f"{r['tokens_per_s']:,}",
                f"{r['x_encode_float32']:.2f}",
                r.get("min_cosine"),
                r.get("min_centred_cosine"),
                r["peak_mib"] or "n/a",
            ]
            for r in rows
        ],
    )


def print_vram(rows: list[dict[str, Any]], device: Device) -> None:
    print_table(
        ["engine", "usable MiB", "budget", "by memory", "max chunks", "predicted MiB", "measured MiB", "ratio"],
        [
            [
                r["engine"],
                r["usable_mib"],
                r["budget_ceiling_tokens"],
                r.get("memory_only_budget_tokens"),
                r["max_batch_chunks"],
                r.get("predicted_full_batch_mib"),
                r["measured_peak_mib"] if device.kind == "cuda" else "n/a (CPU)",
                r.get("measured_over_predicted"),
            ]
            for r in rows
        ],
    )


def print_oom(oom: dict[str, Any]) -> None:
    print(f"  {oom['how']}")
    for event in oom.get("events", []):
        print(f"    {event}")
    print(
        f"  budget {oom['budget_before_tokens']} -> {oom.get('budget_after_tokens')} padded tokens, "
        f"{oom.get('ooms')} OOMs, {oom.get('shrinks')} shrinks, {oom.get('regrows')} regrows; "
        f"{oom['texts']} texts in {oom.get('seconds')} s; min centred cosine to the unforced run "
        f"{oom.get('min_centred_cosine', float('nan')):.5f}: {'recovered' if oom.get('recovered') else 'NOT recovered'}"
    )


if __name__ == "__main__":
    sys.exit(main())
