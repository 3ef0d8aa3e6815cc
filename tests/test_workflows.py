"""The GitHub workflows: linted by actionlint and zizmor (as scripts/test does), and shaped as
docs/operations/rollback.md says: tests before a deployment, a dry run before each push, the
migration list before and after, every action pinned to a commit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def lint(directory: Path) -> subprocess.CompletedProcess[str]:
    return _run(["node", str(REPO_ROOT / "scripts" / "lint-workflows.mjs"), str(directory)])


def zizmor(directory: Path) -> subprocess.CompletedProcess[str]:
    zizmor = Path(sys.executable).with_name("zizmor")  # installed beside this interpreter (dev extra)
    return _run(
        [str(zizmor), "--offline", "--config", str(REPO_ROOT / ".github" / "zizmor.yml"), str(directory)]
    )


def test_the_workflows_pass_both_linters() -> None:
    assert lint(WORKFLOWS).returncode == 0, lint(WORKFLOWS).stderr
    result = zizmor(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "linter", "finding"),
    [
        (("needs: test", "needs: tests"), lint, "does not exist"),
        (
            ('run: npx supabase db push --db-url "$DB_URL" --yes', "run: echo ${{ github.head_ref }}"),
            zizmor,
            "template-injection",
        ),
        (
            ("actions/setup-node@49933ea5288caeca8642d1e84afbd3f7d6820020 # v4.4.0", "some/action@v1"),
            zizmor,
            "unpinned-uses",
        ),
    ],
)
def test_the_linters_catch_a_broken_workflow(
    tmp_path: Path, change: tuple[str, str], linter: object, finding: str
) -> None:
    copy = tmp_path / ".github" / "workflows"
    shutil.copytree(WORKFLOWS, copy)
    deploy = copy / "deploy.yml"
    text = deploy.read_text()
    assert change[0] in text
    deploy.write_text(text.replace(change[0], change[1], 1))
    result = linter(copy)  # type: ignore[operator]
    assert result.returncode != 0
    assert finding in result.stdout + result.stderr


def test_a_release_is_tested_then_dry_run_then_pushed_with_the_list_before_and_after() -> None:
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    assert "uses: ./.github/workflows/ci.yml" in deploy
    assert "needs: test" in deploy
    steps = re.findall(r"run: (npx supabase [^\n]+)", deploy)
    assert steps[:4] == [
        'npx supabase migration list --db-url "$DB_URL"',
        'npx supabase db push --db-url "$DB_URL" --dry-run',
        'npx supabase db push --db-url "$DB_URL" --yes',
        'npx supabase migration list --db-url "$DB_URL"',
    ]
    assert ".ci/run" in (WORKFLOWS / "ci.yml").read_text()
    for path in WORKFLOWS.glob("*.yml"):
        for action in re.findall(r"uses: ([^\s]+)", path.read_text()):
            assert action.startswith("./") or re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
