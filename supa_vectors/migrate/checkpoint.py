"""The run's durable state: what is done, which ids were seen, what went wrong — in one SQLite file.

Why SQLite and not a JSON file: the seen-id index must answer "was this id already read?" for every
record of a corpus of any size without holding the ids in memory, and the cursor, the counts and the
problems of a batch must reach the disk together, after the batch is committed in the store, in one
atomic write that a SIGKILL cannot tear.

The source is read in a fixed order, so the state after each committed batch is a cursor: every record
up to it (file index, position) is settled — written to the store or listed as a problem. Rows written
beyond the cursor (ids and problems of records read ahead) are keyed by their position, so a resumed run
that reads them again writes the same rows instead of new ones.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supa_vectors.errors import InvalidInputError
from supa_vectors.migrate.validation import Issue

__all__ = ["Checkpoint", "Cursor", "FileState", "StoredProblem"]

_SCHEMA = """
create table if not exists run (key text primary key, value text not null);
create table if not exists files (
  idx integer primary key, display text not null, key text not null, size integer not null,
  sha256 text not null, seen integer not null default 0, fatal text
);
create table if not exists ids (id text primary key, idx integer not null, position integer not null);
create table if not exists problems (
  idx integer not null, position integer not null, severity text not null, code text not null,
  line integer, id text, reason text not null,
  primary key (idx, position, severity, code)
);
create table if not exists landed (idx integer not null, status text not null, n integer not null,
  primary key (idx, status));
create table if not exists counters (name text primary key, n integer not null);
"""


@dataclass(frozen=True)
class Cursor:
    """The last record of the last committed batch, in stream order."""

    file_index: int
    position: int
    batches: int


@dataclass(frozen=True)
class FileState:
    index: int
    display: str
    key: str
    size: int
    sha256: str
    records: int
    fatal: str | None
    landed: Mapping[str, int]
    errors: int
    warnings: int


@dataclass(frozen=True)
class StoredProblem:
    file_index: int
    position: int
    line: int | None
    id: str | None
    severity: str
    code: str
    reason: str


class Checkpoint:
    """One run's state file. Safe to share between the reading thread and the writing thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
            self._db.execute("pragma journal_mode = wal")
            # A process crash never loses a committed transaction in WAL mode; only a power loss could
            # lose the last one, and then the batch is re-sent and found unchanged.
            self._db.execute("pragma synchronous = normal")
            self._db.executescript(_SCHEMA)
            self._db.commit()
        except sqlite3.Error as exc:
            raise InvalidInputError(f"cannot open the checkpoint {path}: {exc}") from exc
        self._seen: dict[int, int] = {}
        self._pending: Counter[str] = Counter()
        for idx, seen in self._db.execute("select idx, seen from files"):
            self._seen[int(idx)] = int(seen)

    def close(self) -> None:
        with self._lock:
            self._db.commit()
            self._db.close()

    # -- run -----------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "insert into run (key, value) values (?, ?)"
                " on conflict (key) do update set value = excluded.value",
                (key, json.dumps(value)),
            )
            self._db.commit()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("select value from run where key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- files ---------------------------------------------------------------------------------

    def add_file(self, index: int, display: str, key: str, size: int, sha256: str) -> None:
        with self._lock:
            self._db.execute(
                "insert into files (idx, display, key, size, sha256) values (?, ?, ?, ?, ?)"
                " on conflict (idx) do nothing",
                (index, display, key, size, sha256),
            )
            self._db.commit()
            self._seen.setdefault(index, 0)

    def file_hashes(self) -> dict[int, tuple[str, str]]:
        """index -> (display, sha256) as recorded when the run started."""
        with self._lock:
            return {int(i): (d, s) for i, d, s in self._db.execute("select idx, display, sha256 from files")}

    def note_record(self, file_index: int, position: int, counts: Mapping[str, int] | None = None) -> bool:
        """Count a record read; False when a previous attempt of this run already counted it."""
        with self._lock:
            if position < self._seen.get(file_index, 0):
                return False
            self._seen[file_index] = position + 1
            if counts:
                self._pending.update(counts)
            return True

    def note_fatal(self, file_index: int, reason: str) -> None:
        with self._lock:
            self._db.execute("update files set fatal = ? where idx = ?", (reason, file_index))

    # -- ids -----------------------------------------------------------------------------------

    def claim(self, doc_id: str, file_index: int, position: int) -> tuple[int, int] | None:
        """Reserve an id for this record; returns where it was seen first if that is elsewhere."""
        with self._lock:
            cur = self._db.execute(
                "insert into ids (id, idx, position) values (?, ?, ?) on conflict (id) do nothing",
                (doc_id, file_index, position),
            )
            if cur.rowcount == 1:
                return None
            row = self._db.execute("select idx, position from ids where id = ?", (doc_id,)).fetchone()
        first = (int(row[0]), int(row[1]))
        return None if first == (file_index, position) else first

    # -- problems ------------------------------------------------------------------------------

    def add_problem(
        self, file_index: int, position: int, line: int | None, doc_id: str | None, issue: Issue
    ) -> None:
        with self._lock:
            self._db.execute(
                "insert into problems (idx, position, severity, code, line, id, reason)"
                " values (?, ?, ?, ?, ?, ?, ?)"
                " on conflict (idx, position, severity, code) do update"
                " set line = excluded.line, id = excluded.id, reason = excluded.reason",
                (file_index, position, issue.severity, issue.code, line, doc_id, issue.reason),
            )

    def problems(self) -> Iterator[StoredProblem]:
        """Every problem in source order, read from disk page by page (there may be many)."""
        last = (-1, -1, "", "")
        while True:
            with self._lock:
                rows = self._db.execute(
                    "select idx, position, severity, code, line, id, reason from problems"
                    " where (idx, position, severity, code) > (?, ?, ?, ?)"
                    " order by idx, position, severity, code limit 500",
                    last,
                ).fetchall()
            if not rows:
                return
            for idx, position, severity, code, line, doc_id, reason in rows:
                yield StoredProblem(int(idx), int(position), line, doc_id, severity, code, reason)
            last = tuple(rows[-1][:4])

    def count_problems(self) -> dict[str, int]:
        with self._lock:
            return {
                s: int(n) for s, n in self._db.execute("select severity, count(*) from problems group by 1")
            }

    # -- batches -------------------------------------------------------------------------------

    def commit_batch(
        self, cursor: tuple[int, int], landed: Mapping[tuple[int, str], int], counts: Mapping[str, int]
    ) -> None:
        """After the store committed a batch: move the cursor and add its outcome, atomically."""
        with self._lock:
            db = self._db
            batches = self._cursor_locked()
            db.execute(
                "insert into run (key, value) values ('cursor', ?)"
                " on conflict (key) do update set value = excluded.value",
                (json.dumps([cursor[0], cursor[1], (batches.batches if batches else 0) + 1]),),
            )
            for (idx, status), n in landed.items():
                db.execute(
                    "insert into landed (idx, status, n) values (?, ?, ?)"
                    " on conflict (idx, status) do update set n = landed.n + excluded.n",
                    (idx, status, n),
                )
            self._flush_locked(counts)
            db.commit()

    def flush(self, counts: Mapping[str, int] | None = None) -> None:
        """Persist what was read without a batch to commit (problems at the end of the source)."""
        with self._lock:
            self._flush_locked(counts or {})
            self._db.commit()

    def _flush_locked(self, counts: Mapping[str, int]) -> None:
        merged = Counter(self._pending)
        merged.update(counts)
        self._pending.clear()
        for name, n in merged.items():
            self._db.execute(
                "insert into counters (name, n) values (?, ?)"
                " on conflict (name) do update set n = counters.n + excluded.n",
                (name, n),
            )
        for idx, seen in self._seen.items():
            self._db.execute("update files set seen = max(seen, ?) where idx = ?", (seen, idx))

    def cursor(self) -> Cursor | None:
        with self._lock:
            return self._cursor_locked()

    def _cursor_locked(self) -> Cursor | None:
        row = self._db.execute("select value from run where key = 'cursor'").fetchone()
        if not row:
            return None
        idx, position, batches = json.loads(row[0])
        return Cursor(int(idx), int(position), int(batches))

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {str(k): int(n) for k, n in self._db.execute("select name, n from counters")}

    def files(self) -> list[FileState]:
        with self._lock:
            landed: dict[int, dict[str, int]] = {}
            for idx, status, n in self._db.execute("select idx, status, n from landed"):
                landed.setdefault(int(idx), {})[str(status)] = int(n)
            problems: dict[tuple[int, str], int] = {
                (int(i), str(s)): int(n)
                for i, s, n in self._db.execute(
                    "select idx, severity, count(distinct position) from problems group by 1, 2"
                )
            }
            rows = self._db.execute(
                "select idx, display, key, size, sha256, seen, fatal from files order by idx"
            ).fetchall()
        return [
            FileState(
                index=int(idx),
                display=display,
                key=key,
                size=int(size),
                sha256=sha,
                records=int(seen),
                fatal=fatal,
                landed=landed.get(int(idx), {}),
                errors=problems.get((int(idx), "error"), 0),
                warnings=problems.get((int(idx), "warning"), 0),
            )
            for idx, display, key, size, sha, seen, fatal in rows
        ]
