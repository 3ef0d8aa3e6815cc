"""Runs the pgTAP suites in supabase/tests/database with pg_prove against the local stack.

pgTAP is plain SQL: Debian's postgresql-15-pgtap files, copied into the embedded server's
extension directory by install_pgtap(), work on Postgres 18.
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

from supa_vectors.local import install_pgtap
from tests.conftest import REPO_ROOT, empty_store

PGTAP_DIR = REPO_ROOT / "supabase" / "tests" / "database"


def test_pgtap_suites_pass(database_url: str) -> None:
    install_pgtap()
    empty_store(database_url)
    pg_prove = shutil.which("pg_prove")
    assert pg_prove, "pg_prove is missing: apt-get install libtap-parser-sourcehandler-pgtap-perl"
    files = sorted(str(p) for p in PGTAP_DIR.glob("*.test.sql"))
    assert files
    # pg_prove ignores a URL given to --dbname; it needs the parts.
    url = urlsplit(database_url)
    result = subprocess.run(
        [
            pg_prove,
            "-h",
            url.hostname or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "-d",
            url.path.lstrip("/") or "postgres",
            "--verbose",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All tests successful" in result.stdout
