"""docs/operations/rollback.md, run as written: release N with its data, release N+1 pushed with the
real Supabase CLI and a migration run on it, then the guide's rollback steps; the catalog and the data
are release N's again.

The guide's ``sh`` blocks are the steps: the first is the release, the others the rollback, run in
order by bash with the variables the guide names (``DB_URL``, ``RUN``, ``PREVIOUS``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from supa_vectors import VectorStore
from supa_vectors.local import applied_versions, apply_migrations, find_migrations_dir
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import REPO_ROOT, FakeEmbedder
from tests.test_migrations_rollback import snapshot

GUIDE = REPO_ROOT / "docs" / "operations" / "rollback.md"

DATA = """
select d.external_id, d.content, d.metadata::text, e.embedding::text
  from public.documents d left join public.embeddings e on e.document_id = d.id
 order by 1
"""


def guide_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), flags=re.S)


def run_block(block: str, env: dict[str, str]) -> str:
    script = "\n".join(line.strip() for line in block.splitlines())
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    name = "rollback_guide"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


def data(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(DATA).fetchall()


def test_the_guide_takes_release_n_plus_1_back_to_n(scratch_url: str, tmp_path: Path) -> None:
    blocks = guide_blocks()
    assert len(blocks) == 4, "the guide's steps changed: release, status, data, schema"
    shipped = sorted(find_migrations_dir().glob("*.sql"))
    previous = shipped[-2].name.split("_")[0]

    # Release N: every migration but the newest, and its data.
    release_n = tmp_path / "release-n"
    release_n.mkdir()
    for path in shipped[:-1]:
        shutil.copy(path, release_n)
    apply_migrations(scratch_url, release_n, migrator="builtin")
    with VectorStore(PostgresTransport(scratch_url), embedder=FakeEmbedder(), cache="off") as store:
        store.add(
            [{"id": f"doc-{i}", "content": f"release N document {i}", "metadata": {"i": i}} for i in range(5)]
        )
    catalog_n, data_n = snapshot(scratch_url), data(scratch_url)

    env = {
        **os.environ,
        "PATH": f"{REPO_ROOT / '.venv' / 'bin'}:{REPO_ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
        "DB_URL": scratch_url,
        "PREVIOUS": previous,
        "SUPA_VECTORS_CACHE_DIR": str(tmp_path / "cache"),
        "SUPA_VECTORS_MIRROR_SYNC": "off",
    }
    env.pop("SUPA_VECTORS_DATABASE_URL", None)

    # Release N+1, pushed as the guide says, then a migration run that adds one document and rewrites one.
    run_block(blocks[0], env)
    assert applied_versions(scratch_url)[-1] == shipped[-1].name.split("_")[0]
    source = tmp_path / "documents"
    source.mkdir()
    (source / "new.json").write_text(json.dumps({"id": "doc-new", "content": "written by release N+1"}))
    (source / "doc-1.json").write_text(
        json.dumps({"id": "doc-1", "content": "release N+1 rewrote this", "metadata": {"i": 1}})
    )
    report = json.loads(
        run_block(
            f'supa-vectors migrate {source} --database-url "$DB_URL" --state-dir {tmp_path / "state"} --json',
            env,
        )
    )
    assert data(scratch_url) != data_n

    # The guide's rollback, step by step.
    status = run_block(blocks[1], env)
    assert f"{shipped[-1].name.split('_')[0]}  applied" in status
    run_block(blocks[2], {**env, "RUN": report["run_id"]})
    rolled = run_block(blocks[3], env)
    assert f"{shipped[-1].name.split('_')[0]}  would undo" in rolled

    assert applied_versions(scratch_url)[-1] == previous
    assert snapshot(scratch_url) == catalog_n
    assert data(scratch_url) == data_n
