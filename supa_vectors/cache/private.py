"""Files only the OS user running the app can read: the cache, the mirror and the outbox hold document
text, vectors and (in the outbox) the tokens that queued writes.

Directories are created 0700 and files 0600 whatever the umask (the mode is set explicitly after
creating them). A directory that already exists is used only when this OS user owns it and nobody else
may write in it: a cache directory owned by another user, or group/world-writable, could be read, or
filled with answers and writes that are not ours, so it is refused with a
:class:`~supa_vectors.errors.ConfigurationError`. One that is ours but readable by others (made by an
older version, 0755) is tightened to 0700.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from supa_vectors.errors import ConfigurationError

__all__ = ["open_private_sqlite", "private_dir", "private_file"]

_POSIX = os.name == "posix"


def _check_owner(path: Path, info: os.stat_result, what: str) -> None:
    if _POSIX and info.st_uid != os.geteuid():
        raise ConfigurationError(
            f"the supa-vectors {what} {path} belongs to another user (uid {info.st_uid}); refusing to use "
            "it: choose a cache_dir of your own"
        )


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) 0700, or check an existing one is ours and private."""
    if not path.exists():
        if not path.parent.exists():
            private_dir(path.parent)  # missing parents are ours to create, and private too
        path.mkdir(mode=0o700, exist_ok=True)
        if _POSIX:
            path.chmod(0o700)  # mkdir's mode goes through the umask
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        # An OSError, not a refusal: like a garbled file, the cache is bypassed (the outbox raises).
        raise NotADirectoryError(f"the supa-vectors cache path {path} is not a directory")
    _check_owner(path, info, "cache directory")
    if _POSIX and info.st_mode & 0o022:
        raise ConfigurationError(
            f"the supa-vectors cache directory {path} is writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); refusing to use it: chmod 700 it or choose another"
        )
    if _POSIX and info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing (before SQLite opens it, so its -wal and -shm
    files get the same mode), or check an existing one is ours and make it 0600."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        info = os.fstat(fd)
        _check_owner(path, info, "cache file")
        if _POSIX and stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def open_private_sqlite(
    path: Path,
    schema: str,
    *,
    pragmas: Sequence[str] = (),
    setup: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """The cache's SQLite files (mirror, outbox, accepted credentials): created 0600 before SQLite
    opens them, in autocommit mode for explicit transactions, shared across the store's threads (each
    user holds its own lock), with ``pragmas`` and ``schema`` applied and ``setup`` run; closed again
    if any of that fails."""
    private_file(path)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        for pragma in pragmas:
            conn.execute(f"pragma {pragma}")
        conn.executescript(schema)
        if setup is not None:
            setup(conn)
    except sqlite3.Error:
        conn.close()
        raise
    return conn
