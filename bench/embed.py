"""The embedding pool against bare ``SentenceTransformer.encode`` on one corpus of realistic chunks, in one
run, rounds interleaved so that machine noise hits every configuration alike:

- bare ``encode`` (batch 32) at float32 and at the precision the automatic choice picks;
- the pool at float32 with fixed batches (32 chunks) and with token budgets;
- the pool with the automatic precision choice (calibrated, or read from the calibration cache);
- the pool with two CPU workers sharing the cores instead of one worker using them all.

The corpus: the example PDFs chunked by ``embedding.chunking`` at 128 tokens, plus 256-token chunks of the
first PDF and 32-token chunks of the last (mixed lengths, as several sources with several settings give).

    python bench/embed.py [PDF_DIR] [--rounds 3] [--out docs/bench_embed.md] [--plot docs/bench_embed.png]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connectors.pdf import discover
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from embedding.chunking import ChunkingSettings, chunk_pages
from embedding.devices import cpu_label, usable_cpus
from embedding.model import Embedder, EmbeddingSettings
from embedding.pool import EmbeddingPool

ROOT = Path(__file__).resolve().parent.parent
ENCODE = "encode float32 (batch 32)"
FIXED = "pool float32, fixed 32 chunks"
BUDGET = "pool float32, token budget"
AUTO = "pool auto, token budget"
TWO = "pool float32, 2 CPU workers"


@dataclass
class Config:
    name: str
    run: Callable[[list[str]], np.ndarray]
    precision: str
    pool: EmbeddingPool | None = None
    seconds: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None


def corpus(pdf_dir: Path, embedder: Embedder, max_chunks: int) -> list[str]:
    files = discover([pdf_dir]).files
    if not files:
        raise SystemExit(f"no PDFs under {pdf_dir}")
    pages = {f: [(p.number, p.text) for p in parse_pdf(f, PdfSettings()).pages] for f in files}

    def chunks(f: Path, size: int, overlap: int) -> list[str]:
        settings = ChunkingSettings(chunk_tokens=size, overlap_tokens=overlap)
        return [c.text for c in chunk_pages(pages[f], embedder.tokenizer, settings, embedder.max_seq_length)]

    texts = [t for f in files for t in chunks(f, 128, 40)]
    texts += chunks(files[0], 256, 40)
    texts += chunks(files[-1], 32, 8)
    random.Random(7).shuffle(texts)
    return texts[:max_chunks]


def bare(embedder: Embedder, precision: str) -> Callable[[list[str]], np.ndarray]:
    """``encode`` on a sentence-transformers model as a user would load it, cast (or autocast) like the
    pool's precision."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder.model_dir), device="cpu", local_files_only=True)
    if precision in ("bfloat16", "float16"):
        model = model.to(getattr(torch, precision))
    model.eval()
    autocast = precision.removeprefix("autocast-") if precision.startswith("autocast-") else None

    def run(texts: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=getattr(torch, autocast or "bfloat16"), enabled=autocast is not None):
            vectors = model.encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32)

    return run


def make_pool(embedder: Embedder, cache: Path, precision: str, **pool: Any) -> EmbeddingPool:
    settings = EmbeddingSettings.model_validate(
        {"precision": precision, "pool": {"calibration_dir": str(cache), **pool}}
    )
    p = EmbeddingPool(settings, embedder=embedder)
    p.wait_ready()
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pdfs", nargs="?", default=str(ROOT / "examples" / "pdfs"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-chunks", type=int, default=2000)
    ap.add_argument("--calibration-dir", help="where the pool caches its calibration (default: a temporary dir)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_embed.md"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "bench_embed.png"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("embedding.pool", "embedding.calibrate"):
        logging.getLogger(name).setLevel(logging.INFO)

    embedder = Embedder(EmbeddingSettings(precision="float32"))
    texts = corpus(Path(args.pdfs), embedder, args.max_chunks)
    lengths = [min(n, embedder.max_seq_length) for n in embedder.tokenizer.count(texts)]
    tokens = sum(lengths)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.calibration_dir) if args.calibration_dir else Path(tmp)
        t0 = time.perf_counter()
        auto_pool = make_pool(embedder, cache, precision="auto")
        startup = time.perf_counter() - t0
        choice = auto_pool.precision_choices()["cpu"]
        auto = choice.precision
        fixed = make_pool(embedder, cache, precision="float32", max_batch_items=32, max_batch_tokens=1 << 30)
        budget = make_pool(embedder, cache, precision="float32")
        two = make_pool(embedder, cache, precision="float32", devices=["cpu", "cpu"])
        configs = [
            Config(ENCODE, bare(embedder, "float32"), "float32"),
            Config(FIXED, fixed.embed, "float32", pool=fixed),
            Config(BUDGET, budget.embed, "float32", pool=budget),
            Config(AUTO, auto_pool.embed, auto, pool=auto_pool),
            Config(TWO, two.embed, "float32", pool=two),
        ]
        if auto != "float32":
            configs.insert(1, Config(f"encode {auto} (batch 32)", bare(embedder, auto), auto))
        for c in configs:
            c.run(texts[:64])  # warm
        for _ in range(args.rounds):
            for c in configs:
                start = time.perf_counter()
                c.vectors = c.run(texts)
                c.seconds.append(time.perf_counter() - start)
        stats = {c.name: c.pool.stats() for c in configs if c.pool is not None}
        for c in configs:
            if c.pool is not None:
                c.pool.close()
    report(args, configs, stats, texts, lengths, tokens, choice.summary(), startup)


def encode_padding(texts: list[str], lengths: list[int], batch: int = 32) -> float:
    """Padded over real tokens of ``encode``'s batches: it sorts by characters, not tokens."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    padded = sum(
        len(order[i : i + batch]) * max(lengths[j] for j in order[i : i + batch]) for i in range(0, len(order), batch)
    )
    return padded / max(1, sum(lengths))


def report(
    args: argparse.Namespace,
    configs: list[Config],
    stats: dict[str, Any],
    texts: list[str],
    lengths: list[int],
    tokens: int,
    choice: str,
    startup: float,
) -> None:
    by_name = {c.name: c for c in configs}
    ref = by_name[ENCODE].vectors
    assert ref is not None
    speed = {c.name: tokens / statistics.median(c.seconds) for c in configs}

    def ratio(a: str, b: str) -> str:
        return f"{speed[a] / speed[b]:.2f}x"

    rows = []
    for c in configs:
        assert c.vectors is not None
        cosine = float(np.min(np.sum(c.vectors * ref, axis=1)))
        s = stats.get(c.name)
        batch, padding = "32 (fixed)", f"{encode_padding(texts, lengths):.2f}"
        if s is not None:
            batch = " / ".join(f"{d.mean_batch_chunks:.0f}" for d in s.devices)
            padding = f"{sum(d.padded_tokens for d in s.devices) / max(1, sum(d.tokens for d in s.devices)):.2f}"
        rows.append(
            f"| {c.name} | {c.precision} | {speed[c.name]:,.0f} | {ratio(c.name, ENCODE)} | {batch} | {padding} | "
            f"{cosine:.5f} |"
        )
    auto = by_name[AUTO].precision
    same_precision = f"{ratio(BUDGET, ENCODE)} at float32"
    if auto != "float32":
        same_precision += f", {ratio(AUTO, f'encode {auto} (batch 32)')} at {auto}"
    lines = [
        "## Embedding pool (`bench/embed.py`)",
        "",
        f"{len(texts)} chunks, {tokens:,} tokens (median {int(np.median(lengths))}, 5-95% "
        f"{int(np.percentile(lengths, 5))}-{int(np.percentile(lengths, 95))}) from the example PDFs: 128-token "
        "chunks of all, 256-token chunks of the first and 32-token chunks of the last. "
        f"CPU: {cpu_label()}, {usable_cpus()} usable cores, torch {torch.__version__}, no GPU. "
        f"{args.rounds} interleaved rounds, median; one run, {time.strftime('%Y-%m-%d')}.",
        "",
        "| configuration | precision | tokens/s | vs encode fp32 | chunks/batch | padded/real | min cosine vs encode |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- Pool vs bare `encode` at the same precision (target >= 0.95x): **{same_precision}**.",
        f"- Token budgets vs fixed batches of 32 chunks: {ratio(BUDGET, FIXED)}.",
        f"- Automatic precision vs float32 (target >= 3x; needs bf16 hardware): **{ratio(AUTO, BUDGET)}**. "
        f"Choice: {choice}.",
        f"- Two CPU workers sharing the cores vs one worker using them all: {ratio(TWO, BUDGET)}.",
        f"- Pool start-up with the automatic choice, no cache (load, calibrate precision and memory): {startup:.1f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    plot(args.plot, configs, speed, tokens)


def plot(path: str, configs: list[Config], speed: dict[str, float], tokens: int) -> None:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(configs) + 1.2))
    names = [c.name for c in configs]
    low = [speed[c.name] - tokens / max(c.seconds) for c in configs]
    high = [tokens / min(c.seconds) - speed[c.name] for c in configs]
    colours = ["#888" if n.startswith("encode") else "#2a7" for n in names]
    ax.barh(names, [speed[n] for n in names], xerr=[low, high], color=colours, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (median of interleaved rounds; whiskers: slowest and fastest round)")
    ax.set_title("Embedding throughput, all-MiniLM-L6-v2 on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
