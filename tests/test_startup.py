"""What start-up imports: ``import supa_vectors`` and a CLI search load only what they use.

Each check runs in a fresh interpreter (``sys.modules`` of the test process has everything already)
and asserts which modules are loaded, not how long it takes: timings live in bench/cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

HEAVY = ("numpy", "pydantic", "psycopg", "psycopg_pool", "supabase", "httpx", "onnxruntime", "tokenizers")


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    loaded = loaded_after("import supa_vectors")
    assert not {name for name in HEAVY if name in loaded}
    assert "supa_vectors._store" not in loaded


def test_a_public_name_imports_its_module_on_first_access() -> None:
    loaded = loaded_after("from supa_vectors import CircuitBreaker, SearchResult")
    assert "pydantic" in loaded  # SearchResult is a pydantic model
    assert "supa_vectors.cache.layer" not in loaded  # the breaker alone does not need the cache layer
    assert "supa_vectors._store" not in loaded


def test_a_cli_search_does_not_load_the_migration_or_the_model() -> None:
    loaded = loaded_after("from supa_vectors.cli import build_parser; build_parser(['search', 'x'])")
    assert "supa_vectors._store" in loaded
    # Nor OpenTelemetry (installed in the dev environment): spans need it only once the app has it.
    for name in (
        "supa_vectors.migrate",
        "supa_vectors.embedding",
        "onnxruntime",
        "tokenizers",
        "opentelemetry",
    ):
        assert name not in loaded
