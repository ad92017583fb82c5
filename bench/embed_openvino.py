"""OpenVINO vs torch float32 on this CPU, side by side in one run, on the chunks of the example PDFs: is an
OpenVINO backend worth adding? (The issue reported 3.4-3.8x on a CPU with AMX, where OpenVINO runs bf16.)

Uses the plain ``openvino`` package (``ov.convert_model`` of the model's BERT module, mean pooling and
normalisation in numpy, as the model's sentence-transformers modules do), not sentence-transformers'
``backend="openvino"``, whose ``optimum-intel`` extra conflicts with the installed transformers. OpenVINO is
not a ragline dependency:

    pip install openvino==2026.4.1 && python bench/embed_openvino.py [PDF_DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.pdf import discover
from connectors.pdf_parse import parse_pdf
from connectors.pdf_settings import PdfSettings
from embedding.chunking import ChunkingSettings, chunk_pages
from embedding.model import Embedder, EmbeddingSettings
from embedding.precision import quality

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pdfs", nargs="?", default=str(Path(__file__).parent.parent / "examples" / "pdfs"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    try:
        import openvino as ov  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        sys.exit("openvino is not installed: pip install openvino==2026.4.1 (not a ragline dependency)")
    import torch
    from sentence_transformers import SentenceTransformer

    base = Embedder(EmbeddingSettings(precision="float32"))
    texts: list[str] = []
    for f in discover([Path(args.pdfs)]).files:
        doc = parse_pdf(f, PdfSettings())
        pages = [(p.number, p.text) for p in doc.pages]
        texts += [c.text for c in chunk_pages(pages, base.tokenizer, ChunkingSettings(), base.max_seq_length)]
    counts = base.tokenizer.count(texts)
    order = np.argsort(counts)  # both sides get the same length-sorted batches
    batches = [[texts[i] for i in order[j : j + args.batch]] for j in range(0, len(texts), args.batch)]
    tokens = sum(counts)

    model: Any = SentenceTransformer(str(base.model_dir), device="cpu", local_files_only=True).eval()
    modules = [type(m).__name__ for m in model]
    if modules[:2] != ["Transformer", "Pooling"] or model[1].get_config_dict().get("pooling_mode") != "mean":
        sys.exit(f"this probe handles Transformer + mean Pooling (+ Normalize) models, not {modules}")
    example = {k: v for k, v in model.preprocess(batches[0][:2]).items() if k in INPUTS}
    started = time.perf_counter()
    converted = ov.convert_model(model[0].auto_model, example_input=example)
    shapes = [str(i.get_partial_shape()) for i in converted.inputs]
    print(f"converted in {time.perf_counter() - started:.1f} s; inputs {shapes}")
    core = ov.Core()
    print("OpenVINO", ov.get_version(), "CPU capabilities:", core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    compiled = {
        p: core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": p, "PERFORMANCE_HINT": "LATENCY"})
        for p in ("f32", "bf16")
    }

    def openvino(hint: str) -> Callable[[Sequence[str]], np.ndarray]:
        def encode(batch: Sequence[str]) -> np.ndarray:
            features = model.preprocess(list(batch))
            inputs = {k: features[k].numpy() for k in INPUTS if k in features}
            hidden: Any = compiled[hint](inputs)[0]
            mask = inputs["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
            return out.astype(np.float32)

        return encode

    def torch_fp32(batch: Sequence[str]) -> np.ndarray:
        features = model.preprocess(list(batch))
        with torch.inference_mode():
            out = model(features)["sentence_embedding"]
        return np.asarray(torch.nn.functional.normalize(out.float(), dim=1).numpy(), dtype=np.float32)

    variants = {"torch float32": torch_fp32, "openvino f32": openvino("f32"), "openvino bf16": openvino("bf16")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, np.ndarray] = {}
    for encode in variants.values():
        encode(batches[0])  # warm up
    for _ in range(args.rounds):  # interleaved, so machine noise hits all alike
        for name, encode in variants.items():
            t0 = time.perf_counter()
            vectors[name] = np.concatenate([encode(b) for b in batches])
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["torch float32"])
    print(
        f"\n{len(texts)} chunks, {tokens:,} tokens, batches of {args.batch} sorted by tokens, median of {args.rounds}"
    )
    print("| variant | tokens/s | vs torch float32 | min cosine | top-10 overlap |\n|---|---|---|---|---|")
    for name in variants:
        med = statistics.median(times[name])
        cos, overlap = quality(vectors["torch float32"], vectors[name], n_queries=min(50, len(texts) // 4))
        print(f"| {name} | {tokens / med:,.0f} | {ref / med:.2f}x | {cos:.5f} | {overlap:.3f} |")


if __name__ == "__main__":
    main()
