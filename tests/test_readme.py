"""The README's SDK example runs as written against the local stack, with the real ONNX model."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT, empty_store


def readme_sdk_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## The SDK", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README has no python example under '## The SDK'"
    return match.group(1)


def run_example(database_url: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"SUPABASE_URL", "SUPABASE_KEY"}}
    env["SUPA_VECTORS_DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-c", readme_sdk_example()],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_example_adds_searches_filters_and_hybrid_searches(database_url: str) -> None:
    empty_store(database_url)
    first = run_example(database_url).splitlines()
    assert first[0] == "2889 documents: {'inserted': 2889, 'updated': 0, 'unchanged': 0}"
    hits = [line.split() for line in first[1:-1]]
    assert len(hits) == 9  # three searches, three results each
    assert all(-1.0 <= float(h[0]) <= 1.0 for h in hits)
    assert [h[2] for h in hits[3:6]] == ["reference"] * 3  # the filtered search
    assert any("wal" in h[1].lower() for h in hits[6:9])  # hybrid search finds the WAL chapter
    assert first[-1] == "2048 guide sections"

    second = run_example(database_url).splitlines()
    assert second[0] == "2889 documents: {'inserted': 0, 'updated': 0, 'unchanged': 2889}"
    assert second[1:] == first[1:]
