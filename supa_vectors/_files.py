"""The one way this package checksums a file: the model installer, a migration's backups and the
store's archives all compare SHA-256 digests of files that can be large."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_of_file"]

_READ_CHUNK = 1 << 20


def sha256_of_file(path: Path) -> tuple[str, int]:
    """Hex SHA-256 of ``path`` and the bytes it read, in 1 MiB reads (memory flat in the file's size).
    ``OSError`` goes up: each caller says what a file it cannot read means."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
