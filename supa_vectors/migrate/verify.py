"""The integrity check: is every source record in the store, with the same content and metadata?

It re-reads the source with the migration's own rules (same ids, same duplicate rule: the first
occurrence of an id wins), looks every expected record up in the store by id, and compares the content
hash and the metadata. It never trusts the migration's checkpoint or report: it is what you run after a
crash, a manual fix or a restore, and alone (``supa-vectors migrate verify``) on a store migrated long ago.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supa_vectors._core.retry import Retry
from supa_vectors.migrate.checkpoint import Checkpoint
from supa_vectors.migrate.readers import DEFAULT_RECORDS_KEYS, RawRecord, SourceFile, read_records
from supa_vectors.migrate.report import MAX_PROBLEMS_IN_MEMORY, VerifyDifference, VerifyFile, VerifyReport
from supa_vectors.migrate.storeio import StoredRow, lookup
from supa_vectors.migrate.validation import Rules, ValidRecord, validate
from supa_vectors.transport.base import Transport

__all__ = ["metadata_difference", "verify_files"]

# Records checked per get_documents call: enough to amortise the round trip, small enough that the
# check holds less than the migration itself (which keeps a few batches in flight).
_LOOKUP_CHUNK = 256


def metadata_difference(source: dict[str, Any], stored: dict[str, Any]) -> str | None:
    """A short description of how two metadata objects differ, or None when they are equal."""
    if source == stored:
        return None
    parts = []
    missing = sorted(set(source) - set(stored))
    extra = sorted(set(stored) - set(source))
    changed = sorted(k for k in set(source) & set(stored) if source[k] != stored[k])
    if missing:
        parts.append("missing in the store: " + ", ".join(missing))
    if extra:
        parts.append("only in the store: " + ", ".join(extra))
    for key in changed[:5]:
        parts.append(f"{key}: source {_show(source[key])}, store {_show(stored[key])}")
    if len(changed) > 5:
        parts.append(f"and {len(changed) - 5} more keys")
    return "; ".join(parts)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


@dataclass
class _FileTally:
    records: int = 0
    expected: int = 0
    matched: int = 0
    missing: int = 0
    differs: int = 0
    invalid: int = 0
    error: str | None = None


class _Verifier:
    def __init__(self, files: Sequence[SourceFile], transport: Transport, retry: Retry) -> None:
        self.files = files
        self.transport = transport
        self.retry = retry
        self.tallies = [_FileTally() for _ in files]
        self.differences: list[VerifyDifference] = []
        self.total = {"missing": 0, "content_differs": 0, "metadata_differs": 0}
        self.matched = 0

    def check(self, pending: list[ValidRecord]) -> None:
        stored = lookup(self.transport, [r.id for r in pending], self.retry)
        for record in pending:
            tally = self.tallies[record.file_index]
            row: StoredRow | None = stored.get(record.id)
            kind: str | None = None
            detail = ""
            if row is None:
                kind, detail = "missing", "no document with this id"
            elif row.content_hash != record.content_hash:
                kind = "content_differs"
                detail = (
                    f"content sha256 {row.content_hash[:12]}… in the store, "
                    f"{record.content_hash[:12]}… in the source"
                )
            else:
                diff = metadata_difference(record.metadata, row.metadata)
                if diff is not None:
                    kind, detail = "metadata_differs", diff
            if kind is None:
                tally.matched += 1
                self.matched += 1
                continue
            if kind == "missing":
                tally.missing += 1
            else:
                tally.differs += 1
            self.total[kind] += 1
            if len(self.differences) < MAX_PROBLEMS_IN_MEMORY:
                self.differences.append(
                    VerifyDifference(
                        file=self.files[record.file_index].display,
                        position=record.position,
                        id=record.id,
                        kind=kind,  # type: ignore[arg-type]
                        detail=detail,
                    )
                )


def verify_files(
    files: Sequence[SourceFile],
    transport: Transport,
    rules: Rules,
    *,
    records_keys: Sequence[str] = DEFAULT_RECORDS_KEYS,
    retry: Retry | None = None,
) -> VerifyReport:
    """Check ``files`` against the store behind ``transport``; see the module doc."""
    started = time.monotonic()
    verifier = _Verifier(files, transport, retry or Retry())
    with tempfile.TemporaryDirectory(prefix="supa-vectors-verify-") as scratch:
        seen = Checkpoint(Path(scratch) / "ids.sqlite3")
        try:
            pending: list[ValidRecord] = []
            for file in files:
                tally = verifier.tallies[file.index]
                for item in read_records(
                    file, records_keys=records_keys, content_fields=rules.fields.content
                ):
                    if not isinstance(item, RawRecord):
                        if item.fatal:
                            tally.error = item.reason
                        else:
                            tally.records += 1
                            tally.invalid += 1
                        continue
                    tally.records += 1
                    checked = validate(item, rules)
                    record = checked.record
                    if record is None or seen.claim(record.id, file.index, item.position) is not None:
                        tally.invalid += 1
                        continue
                    tally.expected += 1
                    pending.append(record)
                    if len(pending) >= _LOOKUP_CHUNK:
                        verifier.check(pending)
                        pending = []
            if pending:
                verifier.check(pending)
        finally:
            seen.close()
    tallies = verifier.tallies
    report_files = [
        VerifyFile(
            path=f.display,
            records=t.records,
            expected=t.expected,
            matched=t.matched,
            missing=t.missing,
            differs=t.differs,
            invalid=t.invalid,
            error=t.error,
        )
        for f, t in zip(files, tallies, strict=True)
    ]
    total_differences = sum(verifier.total.values())
    return VerifyReport(
        ok=total_differences == 0,
        files=report_files,
        checked=sum(t.expected for t in tallies),
        matched=verifier.matched,
        missing=verifier.total["missing"],
        content_differs=verifier.total["content_differs"],
        metadata_differs=verifier.total["metadata_differs"],
        invalid=sum(t.invalid for t in tallies) + sum(1 for t in tallies if t.error),
        differences=verifier.differences,
        differences_total=total_differences,
        seconds=time.monotonic() - started,
    )
