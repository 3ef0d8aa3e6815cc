"""What a run did, for people (a summary table) and for scripts (a JSON file and an exit status).

The JSON report lists every problem with file, position and reason; it is written by streaming them from
the checkpoint, because a badly broken corpus can have more problems than anyone wants in memory. The
returned report object keeps the first ``MAX_PROBLEMS_IN_MEMORY`` of them and says how many there were.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EXIT_DIFFERENCES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "MAX_PROBLEMS_IN_MEMORY",
    "Counts",
    "FileReport",
    "MigrationReport",
    "Problem",
    "RollbackReport",
    "VerifyDifference",
    "VerifyFile",
    "VerifyReport",
    "render_migration",
    "render_rollback",
    "render_verify",
    "write_json_report",
]

MAX_PROBLEMS_IN_MEMORY = 1000

# Exit statuses of `supa-vectors migrate` (1 is any error, 2 a usage error, as for every command).
EXIT_OK = 0
EXIT_REJECTED = 3  # finished, but some records were rejected: they are in the report
EXIT_DIFFERENCES = 4  # the integrity check found records that are not in the store as in the source
EXIT_INTERRUPTED = 130


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Problem(_Model):
    """One bad record (``position`` is None for a problem with the whole file)."""

    file: str
    position: int | None
    line: int | None = None
    id: str | None = None
    severity: Literal["error", "warning"]
    code: str
    reason: str


class FileReport(_Model):
    path: str
    sha256: str
    records: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    warnings: int = 0
    error: str | None = None  # why the file could not be read to its end


class Counts(_Model):
    files: int = 0
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    warnings: int = 0
    file_errors: int = 0
    embedded: int = 0
    reused_embeddings: int = 0
    unknown_model_embeddings: int = 0

    @property
    def landed(self) -> int:
        return self.inserted + self.updated + self.unchanged


class VerifyDifference(_Model):
    file: str
    position: int
    id: str
    kind: Literal["missing", "content_differs", "metadata_differs"]
    detail: str


class VerifyFile(_Model):
    path: str
    records: int
    expected: int  # valid, first-of-their-id records: what must be in the store
    matched: int
    missing: int
    differs: int
    invalid: int  # records that cannot be in the store (the migration rejects them too)
    error: str | None = None


class VerifyReport(_Model):
    ok: bool
    files: list[VerifyFile] = Field(default_factory=list)
    checked: int = 0
    matched: int = 0
    missing: int = 0
    content_differs: int = 0
    metadata_differs: int = 0
    invalid: int = 0
    differences: list[VerifyDifference] = Field(default_factory=list)
    differences_total: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if not self.ok:
            return EXIT_DIFFERENCES
        return EXIT_REJECTED if self.invalid else EXIT_OK


class MigrationReport(_Model):
    run_id: str
    status: Literal["completed", "dry_run", "interrupted", "failed"]
    resumed: bool = False
    started_at: datetime
    finished_at: datetime
    seconds: float
    documents_per_second: float
    counts: Counts
    files: list[FileReport]
    problems: list[Problem]
    problems_total: int
    ignored_fields: dict[str, int] = Field(default_factory=dict)
    bulk_load: bool = False
    backup: dict[str, str] | None = None
    verify: VerifyReport | None = None
    state_dir: str | None = None
    report_path: str | None = None
    error: str | None = None

    @property
    def all_landed(self) -> bool:
        """Every record of the source is in the store (for a dry run: would be)."""
        return (
            self.status in ("completed", "dry_run")
            and self.counts.rejected == 0
            and self.counts.file_errors == 0
            and (self.verify is None or self.verify.ok)
        )

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        if self.status == "failed":
            return 1
        if self.verify is not None and not self.verify.ok:
            return EXIT_DIFFERENCES
        return EXIT_OK if self.all_landed else EXIT_REJECTED


class RollbackReport(_Model):
    run_id: str
    deleted: int
    restored: int
    conflicts: list[str]
    already_rolled_back: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_DIFFERENCES if self.conflicts else EXIT_OK


def write_json_report(report: MigrationReport, path: Path, problems: Iterable[Problem]) -> None:
    """The report with *every* problem, written as the problems stream by."""
    head = report.model_dump(mode="json", exclude={"problems"})
    text = json.dumps(head, indent=2, ensure_ascii=False)
    tmp = path.with_suffix(path.suffix + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text[: text.rindex("}")].rstrip() + ',\n  "problems": [')
        first = True
        for problem in problems:
            out.write("\n    " if first else ",\n    ")
            out.write(json.dumps(problem.model_dump(mode="json"), ensure_ascii=False))
            first = False
        out.write("\n  ]\n}\n" if not first else "]\n}\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# Text


def _table(headers: list[str], rows: list[list[Any]], right: set[int]) -> list[str]:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return [line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])]


def _with_details(table: list[str], details: Sequence[str]) -> list[str]:
    """Each row of ``table`` followed by its reason, whole, on a line of its own: a reason is what the
    user acts on, so it is never cut to fit a column (the terminal wraps it)."""
    head, rule, *rows = table
    lines = [head, rule]
    for row, detail in zip(rows, details, strict=True):
        lines += [row, "    " + " ".join(detail.split())]
    return lines


def _short(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_migration(report: MigrationReport, *, max_files: int = 30, max_problems: int = 30) -> str:
    c = report.counts
    dry = report.status == "dry_run"
    lines = [
        f"run {report.run_id}: {report.status}" + (" (resumed)" if report.resumed else ""),
        "",
    ]
    interesting = [f for f in report.files if f.rejected or f.warnings or f.error]
    shown = interesting if len(report.files) > max_files else report.files
    if shown:
        headers = ["file", "records", "would insert" if dry else "inserted", "updated", "unchanged"]
        headers += ["rejected", "warnings", "file error"]
        rows = [
            [
                f.path,
                f.records,
                f.inserted,
                f.updated,
                f.unchanged,
                f.rejected,
                f.warnings,
                _short(f.error or "", 60),
            ]
            for f in shown[:max_files]
        ]
        lines += _table(headers, rows, {1, 2, 3, 4, 5, 6})
        if len(shown) > max_files:
            lines.append(f"... {len(shown) - max_files} more files in the JSON report")
        if shown is interesting:
            lines.append(f"({len(report.files) - len(interesting)} more files without problems)")
        lines.append("")
    verb = "would land" if dry else "landed"
    lines.append(
        f"{c.files} files, {c.records:,} records: {c.landed:,} {verb} "
        f"({c.inserted:,} inserted, {c.updated:,} updated, {c.unchanged:,} unchanged), "
        f"{c.rejected:,} rejected, {c.warnings:,} warnings, {c.file_errors} unreadable files"
    )
    if not dry:
        lines.append(
            f"{c.embedded:,} embedded, {c.reused_embeddings:,} vectors reused from the files; "
            f"{report.seconds:.1f} s, {report.documents_per_second:,.0f} documents/s"
        )
    if c.unknown_model_embeddings:
        lines.append(
            f"{c.unknown_model_embeddings:,} records carried vectors without a model name: re-computed "
            "(pass --embeddings-model MODEL to reuse them)"
        )
    if report.ignored_fields:
        fields = ", ".join(f"{k} ({v:,})" for k, v in sorted(report.ignored_fields.items()))
        lines.append(f"fields not migrated: {fields}")
    if report.problems:
        lines += ["", f"problems ({report.problems_total:,}):"]
        problems = report.problems[:max_problems]
        rows = [
            [p.severity, p.file, "-" if p.position is None else p.position, p.id or "-"] for p in problems
        ]
        lines += _with_details(_table(["", "file", "record", "id"], rows, {2}), [p.reason for p in problems])
        if report.problems_total > max_problems:
            lines.append(f"... {report.problems_total - max_problems:,} more in the JSON report")
    if report.verify is not None:
        lines += ["", render_verify(report.verify, max_files=0)]
    if report.backup:
        lines += ["", f"backup: {report.backup['archive']}"]
    if report.report_path:
        lines.append(f"report: {report.report_path}")
    if report.error:
        lines += ["", f"error: {report.error}"]
    return "\n".join(lines)


def render_verify(report: VerifyReport, *, max_files: int = 30, max_differences: int = 30) -> str:
    # The verdict says what the exit status says: 0 passed, 3 invalid records, 4 differences.
    if not report.ok:
        verdict = "verify FAILED"
    elif report.invalid:
        verdict = "verify passed for the valid records, but the source has invalid ones (never migrated)"
    else:
        verdict = "verify passed"
    lines = [
        f"{verdict}: {report.checked:,} records checked, {report.matched:,} match, "
        f"{report.missing:,} missing, {report.content_differs:,} with other content, "
        f"{report.metadata_differs:,} with other metadata, {report.invalid:,} invalid in the source"
    ]
    files = [f for f in report.files if f.missing or f.differs or f.invalid or f.error]
    if files and max_files:
        rows = [[f.path, f.records, f.expected, f.matched, f.missing, f.differs, f.invalid] for f in files]
        lines += _table(
            ["file", "records", "expected", "matched", "missing", "differs", "invalid"],
            rows[:max_files],
            {1, 2, 3, 4, 5, 6},
        )
    if report.differences:
        differences = report.differences[:max_differences]
        rows = [[d.kind, d.file, d.position, d.id] for d in differences]
        lines += _with_details(
            _table(["", "file", "record", "id"], rows, {2}), [d.detail for d in differences]
        )
        if report.differences_total > max_differences:
            lines.append(f"... {report.differences_total - max_differences:,} more differences")
    return "\n".join(lines)


def render_rollback(report: RollbackReport) -> str:
    if report.already_rolled_back:
        return f"run {report.run_id} was already rolled back; nothing to do"
    lines = [
        f"run {report.run_id}: {report.deleted:,} documents deleted, {report.restored:,} restored to their "
        f"previous state, {len(report.conflicts):,} conflicts"
    ]
    if report.conflicts:
        lines.append(
            "changed since the run (left as they are; roll back later runs first, or --force): "
            + ", ".join(report.conflicts[:20])
            + (" ..." if len(report.conflicts) > 20 else "")
        )
    return "\n".join(lines)
