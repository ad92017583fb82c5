"""float32 vs bfloat16 embedding on the same realistic chunks, side by side in one run: speed and quality
(minimum cosine to the float32 vector, top-10 neighbour overlap). Decides what `embedding.precision: auto` picks
where nothing is calibrated (the plain Embedder, and the pool's candidates on CPU).

    python bench/embed_dtype.py [PDF_DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from connectors.pdf import discover
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from embedding.chunking import ChunkingSettings, chunk_pages
from embedding.model import Embedder, EmbeddingSettings, cpu_has_native_bf16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pdfs", nargs="?", default=str(Path(__file__).parent.parent / "examples" / "pdfs"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    fp32 = Embedder(EmbeddingSettings(precision="float32"))
    bf16 = Embedder(EmbeddingSettings(precision="bfloat16"))
    texts: list[str] = []
    for f in discover([Path(args.pdfs)]).files:
        doc = parse_pdf(f, PdfSettings())
        pages = [(p.number, p.text) for p in doc.pages]
        texts += [c.text for c in chunk_pages(pages, fp32.tokenizer, ChunkingSettings(), fp32.max_seq_length)]
    tokens = sum(fp32.tokenizer.count(texts))
    fp32.embed(texts[:8])
    bf16.embed(texts[:8])
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        for name, model in (("float32", fp32), ("bfloat16", bf16)):
            t0 = time.perf_counter()
            vectors[name] = model.embed(texts)
            times[name].append(time.perf_counter() - t0)
    a, b = vectors["float32"], vectors["bfloat16"]
    cos = np.sum(a * b, axis=1)
    nn_a = np.argsort(-a @ a.T, axis=1)[:, 1:11]
    nn_b = np.argsort(-b @ b.T, axis=1)[:, 1:11]
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(nn_a, nn_b, strict=True)])
    t32, t16 = statistics.median(times["float32"]), statistics.median(times["bfloat16"])
    print(f"{len(texts)} chunks, {tokens} tokens; CPU native bf16: {cpu_has_native_bf16()}")
    print(f"float32 : {tokens / t32:8.0f} tokens/s")
    print(f"bfloat16: {tokens / t16:8.0f} tokens/s  ({t32 / t16:.2f}x float32)")
    print(f"quality : min cosine {cos.min():.5f}, mean {cos.mean():.5f}; top-10 neighbour overlap {overlap:.3f}")


if __name__ == "__main__":
    main()
