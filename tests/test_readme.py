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
    assert first[0] == "14 documents: {'inserted': 14, 'updated': 0, 'unchanged': 0}"
    hits = [line.split() for line in first[1:-1]]
    searched, filtered, hybrid = hits[:3], hits[3:-3], hits[-3:]
    assert len(searched) == 3
    assert len(hybrid) == 3
    assert all(-1.0 <= float(h[0]) <= 1.0 for h in searched + filtered)
    assert "brewing/cold-brew" in [h[1] for h in searched]  # iced coffee is cold brew
    # Only espresso (0.5 min) and the AeroPress (2 min) are pressure methods under 3 minutes.
    assert sorted(h[1] for h in filtered) == ["brewing/aeropress", "brewing/espresso"]
    assert all(h[2] == "pressure" for h in filtered)
    assert hybrid[0][1] == "brewing/french-press"  # its title and its body both match
    assert first[-1] == "3 basics"

    second = run_example(database_url).splitlines()
    assert second[0] == "14 documents: {'inserted': 0, 'updated': 0, 'unchanged': 14}"
    assert second[1:] == first[1:]
