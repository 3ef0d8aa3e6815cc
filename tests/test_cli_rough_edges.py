"""The rough edges of ``migrate`` and the CLI seen in issue 12, each pinned by what a user sees.

Against the shared real database (``clean_url``); the embedder is the deterministic ``FakeEmbedder``
where a command takes one, so no model is loaded.
"""

from __future__ import annotations

import inspect
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from supa_vectors import AsyncVectorStore, DocumentError, VectorStore
from supa_vectors.cli import build_parser, main
from supa_vectors.cli._migrate import migrate_command
from supa_vectors.cli._search import search_command
from tests.conftest import CORPUS, REPO_ROOT, FakeEmbedder

EXAMPLES = REPO_ROOT / "examples" / "documents"
BAD = CORPUS / "bad-documents"


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPA_VECTORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def migrate(argv: list[str]) -> tuple[int, str]:
    args = build_parser(["migrate", *argv]).parse_args(["migrate", *argv])
    out = io.StringIO()
    return migrate_command(args, embedder=FakeEmbedder(), out=out), out.getvalue()


def search(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_parser(["search", *argv]).parse_args(["search", *argv])
    out = io.StringIO()
    capsys.readouterr()
    code = search_command(args, embedder=FakeEmbedder(), out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_usage_errors_exit_2_as_the_help_says(capsys: pytest.CaptureFixture[str], clean_url: str) -> None:
    for argv, message in (
        (["migrate", "--database-url", clean_url], "give one or more PATHs"),
        (["migrate", "rollback", "--database-url", clean_url], "exactly one RUN_ID"),
        (["search", "coffee", "--hybrid", "--threshold", "0.5"], "--threshold applies to vector search"),
        (["search", "coffee", "--timeout", "0"], "--timeout must be a positive number"),
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("usage: supa-vectors"), err
        assert message in err


@pytest.mark.parametrize(
    ("action", "present", "absent"),
    [
        ("verify", ["supa-vectors migrate verify", "--run-id", "--id-field"], ["--dry-run", "--force"]),
        ("rollback", ["supa-vectors migrate rollback", "RUN_ID", "--force"], ["--batch-size", "--id-field"]),
        ("runs", ["supa-vectors migrate runs", "--json"], ["--batch-size", "--force"]),
    ],
)
def test_each_migrate_action_prints_its_own_help(
    capsys: pytest.CaptureFixture[str], action: str, present: list[str], absent: list[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["migrate", action, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: supa-vectors migrate {action}")
    for word in present:
        assert word in text
    for word in absent:
        assert word not in text


def test_verify_says_what_its_exit_status_says(clean_url: str, tmp_path: Path) -> None:
    common = ["--database-url", clean_url, "--state-dir", str(tmp_path / "state")]
    assert migrate([str(EXAMPLES), *common])[0] == 0
    code, text = migrate(["verify", str(EXAMPLES), *common])
    assert code == 0
    assert text.startswith("verify passed:")
    code, text = migrate(["verify", str(EXAMPLES), str(BAD / "empty-content.json"), *common])
    assert code == 3  # finished, but the source holds records that were never migrated
    assert not text.startswith("verify passed:")
    assert text.startswith("verify passed for the valid records, but the source has invalid ones")


def test_reasons_are_printed_whole(clean_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, text = migrate(
        [str(BAD / "huge-content.json"), "--database-url", clean_url, "--state-dir", str(state)]
    )
    assert code == 3
    assert "…" not in text
    report = json.loads(next(state.glob("*/report.json")).read_text())
    reasons = [p["reason"] for p in report["problems"]]
    assert max(len(r) for r in reasons) > 110  # wider than any column a terminal would give it
    for reason in reasons:
        assert f"    {reason}" in text.splitlines()


def test_an_empty_folder_says_so(clean_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a json file")
    code = main(["migrate", str(tmp_path / "empty"), "--database-url", clean_url])
    assert code == 1
    assert "no .json or .jsonl files in" in capsys.readouterr().err
    assert not (tmp_path / ".supa-vectors").exists()  # nothing started, nothing written


def test_a_filter_of_the_wrong_type_explains_the_empty_answer(
    clean_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with VectorStore.from_url(clean_url, embedder=FakeEmbedder(), cache="off") as store:
        store.upsert({"id": "espresso", "content": "espresso coffee", "metadata": {"minutes": 1}})
    base = ["coffee", "--database-url", clean_url, "--no-sync"]
    code, out, err = search([*base, "--filter", '{"minutes": {"$lt": "abc"}}'], capsys)
    assert code == 0
    assert out == ""
    assert 'note: "minutes" $lt "abc" matches only string values' in err
    code, out, err = search([*base, "--filter", '{"$and": [{"minutes": {"$lt": 3}}]}'], capsys)
    assert "espresso" in out
    assert "note" not in err
    code, out, err = search([*base, "--filter", '{"minutes": {"$gt": 3}}'], capsys)
    assert out == ""
    assert 'note: "minutes" $gt 3 matches only number values' in err


@pytest.fixture
def roomy(clean_url: str) -> Iterator[str]:
    """The store with max_content_bytes raised the way the README's Limits says, restored after."""
    with psycopg.connect(clean_url, autocommit=True) as conn:
        (before,) = conn.execute(
            "select value from public.metadata_global where key = 'max_content_bytes'"
        ).fetchone()
        conn.execute(
            "update public.metadata_global set value = '2000000', updated_at = now() "
            "where key = 'max_content_bytes'"
        )
        try:
            yield clean_url
        finally:
            conn.execute(
                "update public.metadata_global set value = %s where key = 'max_content_bytes'",
                (psycopg.types.json.Jsonb(before),),
            )


def test_the_content_limit_says_where_to_raise_it(clean_url: str) -> None:
    big = {"id": "big", "content": "word " * 300_000}  # 1.5 MB
    with (
        VectorStore.from_url(clean_url, embedder=FakeEmbedder(), cache="off") as store,
        pytest.raises(DocumentError, match=r"raise max_content_bytes in public\.metadata_global"),
    ):
        store.upsert(big)
    readme = (REPO_ROOT / "README.md").read_text()
    assert "### Limits" in readme
    sql = r"update public\.metadata_global set value = '\d+'.*where key = 'max_content_bytes';"
    assert re.search(sql, readme)


def test_a_raised_limit_lets_a_larger_document_in(roomy: str) -> None:
    big = {"id": "big", "content": "word " * 300_000}
    with VectorStore.from_url(roomy, embedder=FakeEmbedder(), cache="off") as store:
        assert store.upsert(big)[0].status == "inserted"


def test_the_async_store_closes_like_httpx_and_the_readme_says_so() -> None:
    assert inspect.iscoroutinefunction(AsyncVectorStore.aclose)
    assert not hasattr(AsyncVectorStore, "close")
    readme = (REPO_ROOT / "README.md").read_text()
    assert "await store.aclose()" in readme
    stop_line = next(line for line in readme.splitlines() if line.startswith("supa-vectors local stop "))
    assert "wipe" not in stop_line.split("#", 1)[1].split("`local reset`")[0]
    assert "data stays" in stop_line


def test_the_timeout_comes_from_the_environment_and_is_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from supa_vectors.cli._search import open_store

    monkeypatch.setenv("SUPA_VECTORS_TIMEOUT", "soon")
    assert main(["mirror", "sync", "--database-url", "postgresql://u@127.0.0.1:1/db"]) == 1
    assert "SUPA_VECTORS_TIMEOUT must be a positive number of seconds, got 'soon'" in capsys.readouterr().err
    monkeypatch.setenv("SUPA_VECTORS_TIMEOUT", "7")
    args = build_parser(["search", "x"]).parse_args(["search", "x", "--database-url", "postgresql://u@h/db"])
    with open_store(args, FakeEmbedder()) as store:
        assert store.transport._connect_timeout == 7  # type: ignore[attr-defined]
    args.timeout = 3.0  # --timeout wins over the environment
    with open_store(args, FakeEmbedder()) as store:
        assert store.transport._connect_timeout == 3  # type: ignore[attr-defined]


def test_every_limit_the_store_holds_is_in_the_readme_with_its_default(clean_url: str) -> None:
    """The README's Limits table is the one place a user learns what to raise: every setting of
    metadata_global but the model's identity appears there, with the default the migrations set."""
    identity = {"embedding_model", "embedding_dimension", "schema_version"}
    with psycopg.connect(clean_url) as conn:
        settings = dict(conn.execute("select key, value #>> '{}' from public.metadata_global").fetchall())
    readme = (REPO_ROOT / "README.md").read_text()
    limits = readme[readme.index("### Limits") :].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+(?:[kMG]B)?) \|", limits, flags=re.M))
    assert {key: value for key, value in settings.items() if key not in identity} == rows
