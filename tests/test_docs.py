"""docs/troubleshooting.md covers every exception a user can meet and every exit status of the CLI."""

from __future__ import annotations

import re

import pytest

import supa_vectors
from tests.conftest import REPO_ROOT

PAGE = (REPO_ROOT / "docs" / "troubleshooting.md").read_text()


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= subclasses(sub)
    return found


def test_every_exception_has_a_section() -> None:
    documented = set(re.findall(r"^### (\w+)$", PAGE, flags=re.M))
    names = {
        cls.__name__ for cls in {supa_vectors.SupaVectorsError, *subclasses(supa_vectors.SupaVectorsError)}
    }
    assert names <= documented, f"not in docs/troubleshooting.md: {sorted(names - documented)}"


def test_every_exit_status_is_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The statuses `supa-vectors migrate --help` lists (the CLI's full set: 0, 1 and 2 are every
    command's) each have a row."""
    from supa_vectors.cli import main

    with pytest.raises(SystemExit):
        main(["migrate", "--help"])
    listed = capsys.readouterr().out.split("exit status:", 1)[1]
    statuses = {int(code) for code in re.findall(r"^\s+(\d+)\s", listed, flags=re.M)}
    assert {0, 1, 2, 3, 4, 130} <= statuses
    table = PAGE.split("## CLI exit statuses", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert statuses == documented
