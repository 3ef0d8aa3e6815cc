"""``python -m bench --quick`` runs end to end and prints every section's ratios.

The benchmarks are code too: without a run in CI they rot. This never asserts a time or a ratio's value
(this machine is shared and noisy); it asserts that every section ran and printed its comparisons.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SECTIONS

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the local stack is POSIX only")


def test_quick_benchmark_runs_every_section_and_prints_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "SUPA_VECTORS_TEST_DATABASE_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    for name in SECTIONS:
        match = re.search(rf"^== {name}: (\d+) figures, (\d+) ratios", proc.stdout, re.MULTILINE)
        assert match, f"section {name} printed no summary:\n{log[-6000:]}"
        assert int(match.group(2)) > 0, f"section {name} printed no ratio"
        assert re.search(rf"^\[{name}\] .*$\n(.*\n)*?  .*\(\S+x ", proc.stdout, re.MULTILINE), name
    results = json.loads(out.read_text())
    assert results["quick"] is True
    for name in SECTIONS:
        section = results["sections"][name]
        assert section["status"] == "ok"
        assert any(" / " in key for key in section["values"]), name
