"""A clone is all a user has: nothing the tests, benchmarks or scripts read may live outside it.

Stop 8's suite passed in CI yet failed 14 tests on a user's fresh clone, because ``tests/conftest.py`` read
the corpus from a ``shared`` folder beside the repository. The corpus now ships in ``corpus/``; this test
keeps it that way by looking for every way a path can leave the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "bench", "scripts", ".ci")
TEXT_SUFFIXES = {"", ".py", ".sh", ".sql", ".toml", ".md", ".txt", ".json", ".cfg", ".ini"}

# Spelled in pieces so that this file does not match itself.
LEAVING = [
    re.compile(r"\.\." + r"/"),  # a relative path that climbs out
    re.compile(r"REPO_ROOT\s*\.\s*parent"),  # the repository's parent
    re.compile("/" + r"work/"),  # this workplace's absolute paths
    # a path component named after the developers' folder, joined with pathlib's /
    re.compile(r"/\s*[\"']" + "shared" + r"[\"']|[\"']" + "shared" + r"[\"']\s*/"),
]
PARENT_CHAIN = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent)+)")


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def test_nothing_under_tests_bench_or_scripts_points_outside_the_repository() -> None:
    offenders = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        relative = path.relative_to(REPO_ROOT)
        for number, line in enumerate(text.splitlines(), 1):
            if any(pattern.search(line) for pattern in LEAVING):
                offenders.append(f"{relative}:{number}: {line.strip()}")
            for match in PARENT_CHAIN.finditer(line):
                climbs = match.group(1).count(".parent")
                # Path(__file__).parent is the file's own folder; a file at depth n reaches the root in n.
                if climbs > len(relative.parts):
                    offenders.append(f"{relative}:{number}: climbs {climbs} levels from {relative}")
    assert not offenders, "paths that leave the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "line",
    [
        "SHARED = REPO_ROOT." + 'parent / "sha' + 'red"',
        'open("..' + '/data.json")',
        'CORPUS = Path("/wo' + 'rk/shared/corpus")',
    ],
)
def test_the_scan_catches_each_way_out(line: str) -> None:
    assert any(pattern.search(line) for pattern in LEAVING)


def test_a_parent_chain_past_the_root_is_caught() -> None:
    line = "CORPUS = Path(__file__).resolve()" + ".parent" * 3 + " / 'corpus'"
    match = PARENT_CHAIN.search(line)
    assert match is not None
    assert match.group(1).count(".parent") > len(Path("bench/x.py").parts)


def test_the_corpus_the_suite_reads_ships_with_the_repository() -> None:
    documents = sorted((REPO_ROOT / "corpus" / "postgres-docs" / "documents").glob("*.json"))
    queries = (REPO_ROOT / "corpus" / "postgres-docs" / "queries.jsonl").read_text().splitlines()
    assert len(documents) == 1058
    assert len([q for q in queries if q.strip()]) == 411
    assert all("answer_id" in json.loads(q) for q in queries if q.strip())
    bad = {p.name for p in (REPO_ROOT / "corpus" / "bad-documents").iterdir()}
    assert {"not-utf8.json", "truncated.json", "nul-character.json", "huge-content.json"} <= bad
