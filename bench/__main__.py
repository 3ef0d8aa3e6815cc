"""``python -m bench [--quick] [--only NAMES] [--json OUT]``: every benchmark of BENCHMARKS.md.

Sections (``--only`` takes a comma-separated subset, in any order):

  embedding  ONNX fp32/int8 against sentence-transformers: throughput, latency, memory, GFLOP/s
  ingest     bulk_upsert against vecs, the naive path, batched SQL and binary COPY
  search     match_documents latency/recall at several ef_search, against vecs and raw SQL
  filtered   10% and 1% metadata filters: rows returned and recall, against vecs
  quality    recall@1/@10 and MRR on the corpus queries: vector, full-text, hybrid (fp32, int8)
  offline    cache hits, answers with the backend down, mirror search (bench/offline.py)
  migration  the shared corpus through the migration path, and memory at 1x and 10x (bench/migration.py)
  bulkload   8 searchers' latency while another tenant bulk-loads, index kept or dropped (bench/bulkload.py)
  backup     backup and restore: peak memory at two store sizes (flat), throughput (bench/backup.py)
  cli        whole CLI processes: start-up, and searches with the backend down against up (bench/cli.py)
  http       the Edge Function under Deno against the SDK: search latency, 8 clients, cold start,
             text embedded at the edge (bench/http.py)
  integrations  the LangChain and LlamaIndex adapters against LlamaIndex's vecs-based Supabase store:
             filtered search at 10% and 1% (bench/integrations.py)
  scale      10k / 100k / 1M rows: ingest, index build and size, search and filtered latency and
             recall, server memory; halfvec against vector at 1M (bench/scale.py, ~1 h)

``--quick`` runs small sizes (about a minute) so CI keeps the code working; its figures mean little.
Every figure is printed with its ratio to a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import REPO_ROOT, cpu_features

SECTIONS = (
    "embedding",
    "ingest",
    "search",
    "filtered",
    "quality",
    "offline",
    "migration",
    "bulkload",
    "backup",
    "cli",
    "http",
    "integrations",
    "scale",
)
# section -> (module, function taking quick). search and filtered share one loaded store: when both
# are chosen, bench.search.run_parts loads it once and returns the figures of both.
_RUNNERS: dict[str, tuple[str, str]] = {
    "embedding": ("bench.embedding", "run"),
    "ingest": ("bench.ingest", "run"),
    "search": ("bench.search", "run_search_only"),
    "filtered": ("bench.search", "run_filtered"),
    "quality": ("bench.quality", "run"),
    "offline": ("bench.offline", "run"),
    "migration": ("bench.migration", "run"),
    "bulkload": ("bench.bulkload", "run"),
    "backup": ("bench.backup", "run"),
    "cli": ("bench.cli", "run"),
    "http": ("bench.http", "run"),
    "integrations": ("bench.integrations", "run"),
    "scale": ("bench.scale", "run"),
}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpu_features": cpu_features(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load],
        "commit": commit,
    }


def _runner(name: str) -> Callable[[bool], dict[str, float]] | str:
    """The section's ``run(quick)``, or why it is not available."""
    module_name, attr = _RUNNERS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return "not available yet"
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        return f"not available yet ({module_name} has no {attr}())"
    return fn  # type: ignore[no-any-return]


def _shared_search(shared: dict[str, dict[str, float]]) -> Callable[[bool], dict[str, float]]:
    """search and filtered from one loaded store; the first call runs both, the second reads."""

    def run(quick: bool, name: str = "") -> dict[str, float]:
        from bench.search import run_parts

        if not shared:
            shared.update(run_parts(quick, ["search", "filtered"]))
            return shared.pop("search")
        return shared.pop("filtered")

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for CI (figures are not meaningful)"
    )
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)

    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    info = machine()
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}")
    print(f"# {info['cpu']} ({info['cpus']} CPUs), Python {info['python']}, commit {info['commit']}")
    print(f"# CPU features: {info['cpu_features']}")
    print(f"# load average at start: {info['load_average']}")

    results: dict[str, Any] = {"command": command, "machine": info, "quick": args.quick, "sections": {}}
    failed: list[str] = []
    shared: dict[str, dict[str, float]] = {}
    for name in SECTIONS:
        if name not in chosen:
            continue
        runner = _runner(name)
        if name in ("search", "filtered") and {"search", "filtered"} <= set(chosen):
            runner = _shared_search(shared)
        print(f"\n== {name} ==", flush=True)
        if isinstance(runner, str):
            print(f"  {name}: {runner}")
            results["sections"][name] = {"status": runner}
            continue
        started = time.perf_counter()
        try:
            values = runner(args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            results["sections"][name] = {"status": "failed"}
            continue
        elapsed = time.perf_counter() - started
        if values and not any(" / " in key for key in values):
            # Sections by other engineers return plain figures; print them as they came.
            for key, value in values.items():
                print(f"  {key:<58} {value:.4g}")
        ratios = sum(" / " in key for key in values)
        print(f"== {name}: {len(values)} figures, {ratios} ratios, {elapsed:.1f} s ==", flush=True)
        results["sections"][name] = {"status": "ok", "seconds": round(elapsed, 1), "values": values}
        if args.json:  # after every section, so a long run that dies keeps what it measured
            args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\n# load average at end: {results['machine']['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"# figures written to {args.json}")
    if failed:
        print(f"# FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
