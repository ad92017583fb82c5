"""int8 (OpenVINO + NNCF) against torch float32, side by side in one run: embed-phase tokens/s, interleaved per
batch (the fastest of ``--rounds`` kept, so noise on a shared machine hits every variant alike), and the gate
figures against float32 on real chunks of the example PDFs and on the built-in calibration set; then what mixing
int8 and float32 vectors in one generation does to the same figures (the model identity decision).

    python bench/int8.py [PDF_DIR] [--rounds 3]

Needs the extra ``ragline[int8]`` (``make install`` installs it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.pdf import discover
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from embedding import gates
from embedding.budget import pack
from embedding.calibration_text import QUERIES, calibration_texts
from embedding.chunking import ChunkingSettings, chunk_pages
from embedding.devices import CPU_BATCH_TOKENS, Device
from embedding.gates import GateFigures
from embedding.int8_export import calibration_set, quantise
from embedding.int8_runner import Int8Runner
from embedding.int8_support import Int8Support
from embedding.int8_tokens import INPUTS, BatchTokenizer, mean_pool
from embedding.model import Embedder, EmbeddingSettings
from embedding.runner import TorchRunner

Encode = Callable[[Sequence[str]], np.ndarray]


def pdf_chunks(folder: Path, embedder: Embedder) -> list[str]:
    texts: list[str] = []
    for f in discover([folder]).files:
        pages = [(p.number, p.text) for p in parse_pdf(f, PdfSettings()).pages]
        texts += [c.text for c in chunk_pages(pages, embedder.tokenizer, ChunkingSettings(), embedder.max_seq_length)]
    return texts


def openvino_variant(embedder: Embedder, keep_float: list[str] | None, threads: int) -> Encode:
    """An int8 export made here with ``keep_float`` (None: the shipped recipe), compiled as the runner does."""
    support = Int8Support()
    tokenizer = BatchTokenizer(embedder.model_dir, embedder.max_seq_length)
    model = quantise(embedder.model_dir, tokenizer, support, calibration_set(), keep_float)
    compiled = (
        support.openvino()
        .Core()
        .compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    )

    def encode(texts: Sequence[str]) -> np.ndarray:
        features = tokenizer(texts)
        hidden = compiled.create_infer_request().infer({k: features[k] for k in INPUTS})[0]
        return mean_pool(np.asarray(hidden), features["attention_mask"])

    return encode


def timed(variants: dict[str, Encode], texts: list[str], batches: list[list[int]], rounds: int) -> dict[str, float]:
    """Seconds per variant over all batches: per batch, rounds interleaved across variants, fastest kept."""
    total = dict.fromkeys(variants, 0.0)
    for encode in variants.values():
        encode(texts[:8])  # warm up
    for batch in batches:
        chunk = [texts[i] for i in batch]
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(rounds):
            for name, encode in variants.items():
                start = time.perf_counter()
                encode(chunk)
                best[name] = min(best[name], time.perf_counter() - start)
        for name in variants:
            total[name] += best[name]
    return total


def embed_all(encode: Encode, texts: Sequence[str], size: int = 32) -> np.ndarray:
    return np.concatenate([encode(texts[i : i + size]) for i in range(0, len(texts), size)])


def figures_row(name: str, figures: GateFigures) -> str:
    return (
        f"| {name} | {figures.recall:.3f} | {figures.reference_recall:.3f} | {figures.recall_delta:+.4f} | "
        f"{figures.neighbour_overlap:.3f} | {figures.mean_cosine:.4f} | {figures.min_cosine:.4f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pdfs", nargs="?", default=str(Path(__file__).parent.parent / "examples" / "pdfs"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    embedder = Embedder(EmbeddingSettings(precision="float32"))
    device = Device("cpu", "cpu", "cpu", "cpu", threads=args.threads)
    corpora = {"example PDFs": pdf_chunks(Path(args.pdfs), embedder), "calibration set": calibration_texts()}

    variants: dict[str, Encode] = {"torch float32": TorchRunner(embedder.model_dir, device, "float32").forward}
    variants["torch bfloat16"] = TorchRunner(embedder.model_dir, device, "bfloat16").forward
    started = time.perf_counter()
    shipped = Int8Runner(embedder.model_dir, embedder.revision, device, embedder.max_seq_length)
    shipped.load()
    print(f"int8 export (convert + NNCF, no cache) {time.perf_counter() - started:.1f} s")
    variants["int8, first and last layer float (shipped)"] = shipped.forward
    variants["int8, every layer"] = openvino_variant(embedder, [], args.threads)

    texts = corpora["example PDFs"]
    counts = [min(c, embedder.max_seq_length) for c in embedder.tokenizer.count(texts)]
    batches = pack(counts, lambda _length: CPU_BATCH_TOKENS, 512)
    seconds = timed(variants, texts, batches, args.rounds)
    tokens = sum(counts)
    ref = seconds["torch float32"]
    print(f"\n{len(texts)} chunks, {tokens:,} tokens, {len(batches)} batches of <= {CPU_BATCH_TOKENS} padded tokens,")
    print(f"{args.threads} threads, fastest of {args.rounds} interleaved rounds per batch\n")
    print("| variant | tokens/s | x torch float32 |\n|---|---|---|")
    for name, spent in seconds.items():
        print(f"| {name} | {tokens / spent:,.0f} | {ref / spent:.2f}x |")

    print("\n| corpus, variant | recall@5 | float32 | delta | top-10 overlap | mean cosine | min cosine |")
    print("|---|---|---|---|---|---|---|")
    mixes: list[str] = []
    for corpus, docs in corpora.items():
        items = gates.known_items(docs)
        queries = [*QUERIES, *(item.query for item in items)]
        ref_q, ref_d = embed_all(variants["torch float32"], queries), embed_all(variants["torch float32"], docs)
        for name, encode in variants.items():
            if name == "torch float32":
                continue
            cand_q, cand_d = embed_all(encode, queries), embed_all(encode, docs)
            measured = gates.measure(ref_q, ref_d, cand_q, cand_d, items, len(items))
            print(figures_row(f"{corpus} ({len(docs)} texts, {len(items)} known items), {name}", measured))
            if "shipped" in name:
                mixed = ref_d.copy()
                mixed[1::2] = cand_d[1::2]  # every other chunk embedded by int8: one generation of both
                for label, qs in (("int8 queries", cand_q), ("float32 queries", ref_q)):
                    figures = gates.measure(ref_q, ref_d, qs, mixed, items, len(items))
                    mixes.append(figures_row(f"{corpus}, half the chunks int8, {label}", figures))
                bias = float(np.mean(cand_q @ cand_d.T - cand_q @ ref_d.T))
                spread = float(np.std(ref_q @ ref_d.T))
                mixes.append(
                    f"| {corpus}: int8 query's score, int8 doc minus float32 doc: {bias:+.4f} "
                    f"(score spread {spread:.3f}) | | | | | | |"
                )
    print("\n| mixed generation | recall@5 | float32 | delta | top-10 overlap | mean cosine | min cosine |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(mixes))


if __name__ == "__main__":
    main()
