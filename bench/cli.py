"""The command line as a user feels it: whole processes, start to exit, with the backend up and down.

``python -m bench --only cli`` (or ``python -m bench.cli [--quick]``). Every figure is the median of
several runs of a fresh ``supa-vectors`` process, with its ratio against a baseline timed in the same
run, interleaved with it so that the machine's load (2 cores, shared) hits both alike:

* start-up: ``import supa_vectors`` and a CLI search of a cached question, against a bare
  ``python -c pass``;
* outage: the same searches with the backend stopped (refused connections), against the backend up:
  a question asked before (answered from the results cache) and a new one (embedded, answered from the
  mirror that ``migrate`` synced, against a new question answered online).

The code measured is whatever ``supa_vectors`` the interpreter imports (``PYTHONPATH``), so the same
script times an older checkout for before/after figures. It runs its own local stack and cache.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench._common import REPO_ROOT, Report, ratio

ASKED = "how do I make iced coffee"
NEW = [
    "which grind for a moka pot",
    "does water temperature matter for tea-like coffee",
    "what does a burr grinder do",
    "how long should a french press steep",
    "why is my espresso sour",
    "how to store coffee beans",
    "what is a pour over",
    "is cold brew less acidic",
    "how much coffee per cup",
    "what makes crema",
    "milk frothing for latte",
    "decaf process explained",
]


def _timed(argv: Sequence[str], env: dict[str, str], *, expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def _paired(a: Sequence[str], b: Sequence[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately."""
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(_timed(a, env))
        times_b.append(_timed(b, env))
    return statistics.median(times_a), statistics.median(times_b)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from supa_vectors.cli import main; sys.exit(main())", *args]


def run(quick: bool, *, startup_only: bool = False) -> dict[str, float]:
    """``startup_only``: skip the outage half (an older checkout waits ~60 s per search there)."""
    report = Report("cli")
    runs = 3 if quick else 9
    report.note(f"{runs} runs per figure, medians")
    base = Path(tempfile.mkdtemp(prefix="supa-vectors-bench-cli-", dir="/tmp"))
    base.chmod(0o755)
    env = {
        **os.environ,
        "SUPA_VECTORS_LOCAL_DIR": str(base / "stack"),
        "SUPA_VECTORS_CACHE_DIR": str(base / "cache"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)),
    }
    for name in ("SUPA_VECTORS_DATABASE_URL", "SUPABASE_URL", "SUPABASE_KEY"):
        env.pop(name, None)
    try:
        report.heading("start-up (whole process)")
        bare, imported = _paired(
            [sys.executable, "-c", "pass"], [sys.executable, "-c", "import supa_vectors"], env, runs
        )
        report.figure("python -c pass", bare * 1000, "ms")
        report.figure(
            "python -c 'import supa_vectors'", imported * 1000, "ms", {"bare python": ratio(imported, bare)}
        )
        _timed(_cli("local", "start"), env)
        _timed(
            _cli("migrate", str(REPO_ROOT / "examples" / "documents"), "--state-dir", str(base / "state")),
            env,
        )
        _timed(_cli("search", ASKED, "-k", "3"), env)  # now cached
        _, cached = _paired([sys.executable, "-c", "pass"], _cli("search", ASKED, "-k", "3"), env, runs)
        report.figure(
            "supa-vectors search, cached question, backend up",
            cached * 1000,
            "ms",
            {"bare python": ratio(cached, bare)},
        )
        new_up = statistics.median(_timed(_cli("search", q, "-k", "3"), env) for q in NEW[: runs // 2 + 1])
        report.figure("supa-vectors search, new question, backend up", new_up * 1000, "ms")

        if startup_only:
            return report.values
        report.heading("outage: the backend stopped (connections refused)")
        _timed(_cli("local", "stop"), env)
        down = statistics.median(_timed(_cli("search", ASKED, "-k", "3"), env) for _ in range(runs))
        report.figure(
            "supa-vectors search, cached question, backend down",
            down * 1000,
            "ms",
            {"backend up": ratio(down, cached)},
        )
        unseen = NEW[runs // 2 + 1 :][: max(1, runs // 2 + 1)]
        mirror = statistics.median(_timed(_cli("search", q, "-k", "3"), env) for q in unseen)
        report.figure(
            "supa-vectors search, new question, backend down (mirror)",
            mirror * 1000,
            "ms",
            {"backend up": ratio(mirror, new_up)},
        )
    finally:
        subprocess.run(_cli("local", "stop"), env=env, capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return report.values


if __name__ == "__main__":
    values = run("--quick" in sys.argv, startup_only="--startup-only" in sys.argv)
    print(f"{len(values)} figures")
