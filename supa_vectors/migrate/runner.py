"""The migration itself: read → validate → embed → write, as a pipeline, resumable after any crash.

Three kinds of threads, so the embedder never waits for the database:

* the caller's thread reads and validates records and cuts them into batches;
* ``workers`` embedding threads look each batch up in the store (only new or changed content is
  embedded, so a second run embeds nothing) and embed it;
* one writing thread sends the batches to ``bulk_upsert`` strictly in source order and, after each
  commit, moves the checkpoint's cursor.

At most ``workers + 2`` batches are in flight, which bounds memory whatever the size of the source.
Writing in order is what makes the checkpoint a single cursor, and ``bulk_upsert`` being one
transaction per batch is what makes the cursor honest: a batch is in the store completely or not at
all. Re-sending a batch that did commit (a crash between the commit and the checkpoint) finds every
record unchanged, and the server-side run history still counts it as this run's work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from supa_vectors._core import rpcs, upsert
from supa_vectors._core.retry import Retry, call
from supa_vectors._core.settings import EmbedderLike, StoreSettings, check_embedder
from supa_vectors._core.upsert import (
    JOB_BULK_MIN_ROWS,
    bytes_per_float,
    cut_chunks,
    send_chunk,
    use_bulk_path,
    vector_request_bytes,
)
from supa_vectors._store import VectorStore
from supa_vectors.errors import (
    AuthError,
    BackendUnavailableError,
    DocumentError,
    EmbeddingError,
    InvalidInputError,
    NotFoundError,
    QueryTimeoutError,
    SupaVectorsError,
)
from supa_vectors.migrate.backup import Backup, checksums, create_backup
from supa_vectors.migrate.checkpoint import Checkpoint, Cursor, StoredProblem
from supa_vectors.migrate.progress import NullProgress, Progress
from supa_vectors.migrate.readers import (
    DEFAULT_RECORDS_KEYS,
    RawRecord,
    ReadProblem,
    SourceFile,
    discover,
    read_records,
)
from supa_vectors.migrate.report import (
    MAX_PROBLEMS_IN_MEMORY,
    Counts,
    FileReport,
    MigrationReport,
    Problem,
    VerifyReport,
    write_json_report,
)
from supa_vectors.migrate.storeio import StoredRow, drive, lookup
from supa_vectors.migrate.validation import (
    DEFAULT_MAX_METADATA_DEPTH,
    EmbeddingPolicy,
    FieldMap,
    Issue,
    Rules,
    ValidRecord,
    validate,
)
from supa_vectors.migrate.verify import verify_files
from supa_vectors.transport.base import SupportsSessionUser

__all__ = [
    "BULK_LOAD_MIN_ROWS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_STATE_DIR",
    "MigrationOptions",
    "find_resumable",
    "migrate",
    "new_run_id",
]

DEFAULT_STATE_DIR = Path(".supa-vectors") / "migrations"
DEFAULT_BATCH_SIZE = 256
# The first batch is small so the writer starts while the embedder works on the second.
_FIRST_BATCH = 32
# Building the HNSW index over loaded rows is much cheaper than loading through it (figures: decision
# 0016). A migration is a bulk job: use_bulk_path(job=True), the store's rule with the job's figure; the
# server still keeps the index unless the load dwarfs what the store holds (decision 0012). The count
# is of records in the source, never bytes: one oversize file is one record.
BULK_LOAD_MIN_ROWS = JOB_BULK_MIN_ROWS
_CHECKPOINT = "checkpoint.sqlite3"
_FILE_PROBLEM = -1  # position of a problem with a whole file


@dataclass(frozen=True)
class MigrationOptions:
    """How a run reads and writes; kept in the checkpoint so ``--resume`` continues the same way."""

    fields: FieldMap = field(default_factory=FieldMap)
    records_keys: tuple[str, ...] = DEFAULT_RECORDS_KEYS
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = 1
    embeddings_model: str | None = None
    embedding_mismatch: EmbeddingPolicy = "recompute"
    max_metadata_depth: int = DEFAULT_MAX_METADATA_DEPTH
    backup: bool = True
    verify: bool = True
    bulk_load: bool | None = None
    retry: Retry = field(default_factory=Retry)

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "max_metadata_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.embedding_mismatch not in ("recompute", "reject"):
            raise InvalidInputError(
                f"embedding_mismatch must be 'recompute' or 'reject', got {self.embedding_mismatch!r}"
            )

    def as_json(self) -> dict[str, Any]:
        """What a resumed run must keep (batching and retries may change between attempts)."""
        return {
            "fields": self.fields.as_json(),
            "records_keys": list(self.records_keys),
            "embeddings_model": self.embeddings_model,
            "embedding_mismatch": self.embedding_mismatch,
            "max_metadata_depth": self.max_metadata_depth,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any], **overrides: Any) -> MigrationOptions:
        fields = value["fields"]
        return cls(
            fields=FieldMap(
                id=tuple(fields["id"]),
                content=tuple(fields["content"]),
                metadata=tuple(fields["metadata"]),
                embedding=tuple(fields["embedding"]),
                embedding_model=tuple(fields["embedding_model"]),
            ),
            records_keys=tuple(value["records_keys"]),
            embeddings_model=value["embeddings_model"],
            embedding_mismatch=value["embedding_mismatch"],
            max_metadata_depth=int(value["max_metadata_depth"]),
            **overrides,
        )


def new_run_id() -> str:
    """Sortable by start time, unique without coordination: 20261125T221503Z-4f2a9c."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def find_resumable(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> str | None:
    """The newest run in ``state_dir`` that did not complete, if any."""
    root = Path(state_dir)
    if not root.is_dir():
        return None
    for run_dir in sorted((p for p in root.iterdir() if (p / _CHECKPOINT).is_file()), reverse=True):
        checkpoint = Checkpoint(run_dir / _CHECKPOINT)
        try:
            if checkpoint.get("status") != "completed":
                return run_dir.name
        finally:
            checkpoint.close()
    return None


# --------------------------------------------------------------------------------------------------
# Batches and the pipeline


@dataclass
class _Batch:
    seq: int
    records: list[ValidRecord]
    cursor: tuple[int, int]  # (file index, position) of its last record
    bytes_done: int
    vectors: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    existing: dict[str, StoredRow] = field(default_factory=dict)
    rejected: list[tuple[ValidRecord, Issue]] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0
    error: BaseException | None = None


# How often a thread waiting on the pipeline looks for a deferred Ctrl-C.
_INTERRUPT_POLL_SECONDS = 0.2


@contextlib.contextmanager
def _deferred_interrupt(interrupted: threading.Event) -> Iterator[None]:
    """Turn the first Ctrl-C into ``interrupted`` instead of an exception raised wherever the main
    thread happens to be.

    A KeyboardInterrupt raised asynchronously inside a lock's acquire/release (the pipeline's
    conditions, the checkpoint's lock) can leave it held (CPython bpo-29988), and the run would then
    wait forever for a writer that waits for that lock. The pipeline polls the event
    where nothing is held and raises there. A second Ctrl-C raises at once, as usual. Only the main
    thread's default handler is replaced; an application's own handler is left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Pipeline:
    """The embedding and writing threads, and the bounded, ordered hand-over between them."""

    def __init__(
        self,
        *,
        store: VectorStore,
        embedder: EmbedderLike | None,
        settings: StoreSettings,
        checkpoint: Checkpoint,
        files: Sequence[SourceFile],
        run_id: str,
        options: MigrationOptions,
        progress: Progress,
        dry_run: bool,
    ) -> None:
        self.store = store
        self.transport = store.transport
        self.embedder = embedder
        self.settings = settings
        self.checkpoint = checkpoint
        self.files = files
        self.run_id = run_id
        self.options = options
        self.progress = progress
        self.dry_run = dry_run
        self.stop = threading.Event()
        self.interrupted = threading.Event()
        self.slots = threading.BoundedSemaphore(options.workers + 2)
        self.todo: list[_Batch | None] = []
        self.todo_ready = threading.Condition()
        self.done: dict[int, _Batch] = {}
        self.done_ready = threading.Condition()
        self.submitted = 0
        self.closed = False
        self.failure: BaseException | None = None
        self.documents = 0  # landed in this process

    # -- threads -------------------------------------------------------------------------------

    def start(self) -> None:
        for n in range(self.options.workers):
            # Daemons: an embedder stuck in native code must not keep an interrupted process alive.
            thread = threading.Thread(target=self._embed_loop, name=f"migrate-embed-{n}", daemon=True)
            thread.start()
        self.writer = threading.Thread(target=self._write_loop, name="migrate-write", daemon=True)
        self.writer.start()

    def submit(self, batch: _Batch) -> None:
        """Hand a batch over; blocks while ``workers + 2`` batches are in flight."""
        while not self.slots.acquire(timeout=_INTERRUPT_POLL_SECONDS):
            self.raise_if_interrupted()
        if self.stop.is_set() or self.interrupted.is_set():
            self.slots.release()
            self.raise_if_interrupted()
            raise _Stopped()
        with self.todo_ready:
            self.todo.append(batch)
            self.todo_ready.notify()
        self.submitted = batch.seq

    def close(self) -> None:
        """No more batches: let the threads finish what was submitted, then wait for the writer."""
        with self.todo_ready:
            self.todo.extend([None] * self.options.workers)
            self.todo_ready.notify_all()
        with self.done_ready:
            self.closed = True
            self.done_ready.notify_all()
        while self.writer.is_alive():
            self.raise_if_interrupted()
            self.writer.join(_INTERRUPT_POLL_SECONDS)

    def raise_if_interrupted(self) -> None:
        """Ctrl-C lands here, at a point where no lock is held (see :func:`_deferred_interrupt`)."""
        if self.interrupted.is_set():
            raise KeyboardInterrupt

    def abort(self) -> None:
        """Stop after the batch being written (a transaction is never cut; it commits or not)."""
        self.stop.set()
        with self.done_ready:
            self.done_ready.notify_all()
        with self.todo_ready:
            self.todo_ready.notify_all()
        if hasattr(self, "writer"):
            while self.writer.is_alive():
                self.writer.join(0.5)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.stop.set()
        # Wake a reader blocked on the in-flight limit.
        for _ in range(self.options.workers + 2):
            try:
                self.slots.release()
            except ValueError:
                break
        with self.done_ready:
            self.done_ready.notify_all()

    def _embed_loop(self) -> None:
        while True:
            with self.todo_ready:
                while not self.todo and not self.stop.is_set():
                    self.todo_ready.wait()
                if self.stop.is_set():
                    return
                batch = self.todo.pop(0)
            if batch is None:
                return
            try:
                self._prepare(batch)
            except BaseException as exc:
                batch.error = exc
            with self.done_ready:
                self.done[batch.seq] = batch
                self.done_ready.notify_all()

    def _prepare(self, batch: _Batch) -> None:
        batch.existing = lookup(self.transport, [r.id for r in batch.records], self.options.retry, self.stop)
        if self.dry_run:
            return
        todo = []
        for record in batch.records:
            row = batch.existing.get(record.id)
            if row is not None and row.content_hash == record.content_hash:
                continue  # the store keeps its vector
            if record.embedding is not None:
                batch.vectors[record.id] = record.embedding
                batch.reused += 1
            else:
                todo.append(record)
        self._embed(batch, todo)

    def _embed(self, batch: _Batch, records: list[ValidRecord]) -> None:
        """Embed ``records``; a text the embedder fails on is rejected alone (found by halving)."""
        if not records:
            return
        assert self.embedder is not None
        try:
            output = self.embedder.embed([r.content for r in records])
            vectors = upsert.check_embeddings(output, len(records), self.settings.embedding_dimension)
        except SupaVectorsError as exc:
            if not isinstance(exc, EmbeddingError | InvalidInputError):
                raise
            if len(records) == 1:
                batch.rejected.append(
                    (
                        records[0],
                        Issue("error", "embedding_failed", f"the embedder failed on this text: {exc}"),
                    )
                )
                return
            half = len(records) // 2
            before = len(batch.rejected)
            self._embed(batch, records[:half])
            self._embed(batch, records[half:])
            if len(batch.rejected) - before == len(records):
                # Every text failed on its own: the embedder is broken, not the records.
                del batch.rejected[before:]
                raise
            return
        except Exception as exc:
            raise EmbeddingError(f"the embedder failed on {len(records)} texts: {exc}") from exc
        for record, vector in zip(records, vectors, strict=True):
            batch.vectors[record.id] = vector
        batch.embedded += len(records)

    def _write_loop(self) -> None:
        seq = 1
        try:
            while True:
                with self.done_ready:
                    while seq not in self.done and not self.stop.is_set():
                        if self.closed and seq > self.submitted:
                            return
                        self.done_ready.wait()
                    if self.stop.is_set():
                        return
                    batch = self.done.pop(seq)
                if batch.error is not None:
                    raise batch.error
                self._write(batch)
                seq += 1
                self.slots.release()
        except BaseException as exc:
            self._fail(exc)

    def _write(self, batch: _Batch) -> None:
        refused = {r.id for r, _ in batch.rejected}
        records = [r for r in batch.records if r.id not in refused]
        rejected = list(batch.rejected)
        statuses: dict[str, str] = {}
        if self.dry_run:
            for record in records:
                row = batch.existing.get(record.id)
                statuses[record.id] = (
                    "inserted"
                    if row is None
                    else "unchanged"
                    if row.content_hash == record.content_hash and row.metadata == record.metadata
                    else "updated"
                )
        else:
            statuses = self._upsert(batch, records, rejected)
        for record, issue in rejected:
            self.checkpoint.add_problem(record.file_index, record.position, record.line, record.id, issue)
        landed: Counter[tuple[int, str]] = Counter()
        for record in records:
            if record.id in statuses:
                landed[(record.file_index, statuses[record.id])] += 1
        counts = {"embedded": batch.embedded, "reused_embeddings": batch.reused}
        self.checkpoint.commit_batch(batch.cursor, landed, counts)
        self.documents += sum(landed.values())
        self.progress.advance(documents=self.documents, bytes_done=batch.bytes_done)

    def _upsert(
        self, batch: _Batch, records: list[ValidRecord], rejected: list[tuple[ValidRecord, Issue]]
    ) -> dict[str, str]:
        """Write through the store's write step (:func:`~supa_vectors._core.upsert.send_chunk`); what
        the migration adds: a record the store refuses is rejected alone and the rest resent, and a
        text the embedder fails on while resending is rejected alone (:meth:`_embed`)."""
        resend = True  # the one embed-and-resend of a batch
        dimension = self.settings.embedding_dimension

        def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
            nonlocal resend
            resend = False
            assert self.embedder is not None
            try:
                vectors = upsert.check_embeddings(self.embedder.embed(texts), len(texts), dimension)
            except Exception as exc:
                raise _EmbedFailed() from exc
            batch.embedded += len(texts)
            return vectors

        while records:
            vectors = [batch.vectors.get(r.id) for r in records]
            chunk = send_chunk([self._document(r) for r in records], vectors, dimension, resend=resend)
            try:
                rows = drive(chunk, self.transport, self.options.retry, self.stop, embed)
            except _EmbedFailed:
                self._keep(batch, records, vectors)
                # Embed what still lacks a vector one text at a time where it fails, as _prepare does.
                before = len(batch.rejected)
                self._embed(batch, [r for r in records if r.id not in batch.vectors])
                failed = batch.rejected[before:]
                rejected.extend(failed)
                failed_ids = {r.id for r, _ in failed}
                records = [r for r in records if r.id not in failed_ids]
                continue
            except DocumentError as exc:
                self._keep(batch, records, vectors)
                if exc.index is None or not 0 <= exc.index < len(records):
                    raise
                bad = records.pop(exc.index)
                reason = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
                rejected.append((bad, Issue("error", "rejected_by_store", f"the store refused it: {reason}")))
                continue
            return {str(row["external_id"]): str(row["status"]) for row in rows}
        return {}

    @staticmethod
    def _keep(
        batch: _Batch, records: Sequence[ValidRecord], vectors: Sequence[npt.NDArray[np.float32] | None]
    ) -> None:
        """Vectors the write step embedded stay with the batch, so a resend carries them."""
        for record, vector in zip(records, vectors, strict=True):
            if vector is not None:
                batch.vectors[record.id] = vector

    def _document(self, record: ValidRecord) -> dict[str, Any]:
        file = self.files[record.file_index]
        return {
            "external_id": record.id,
            "content": record.content,
            "metadata": record.metadata,
            "system": {
                "source_file": file.display,
                "source_checksum": self.checksums[record.file_index],
                "ingest_run_id": self.run_id,
                "chunk_index": None,
                "extra": {"position": record.position, "line": record.line},
            },
        }

    checksums: list[str]


class _Stopped(Exception):
    """The pipeline stopped (a failure in another thread); the failure says why."""


class _EmbedFailed(Exception):
    """The embedder failed while the write step re-embedded; its cause is the failure."""


# --------------------------------------------------------------------------------------------------
# Reading


def _read(
    files: Sequence[SourceFile],
    rules: Rules,
    options: MigrationOptions,
    checkpoint: Checkpoint,
    cursor: Cursor | None,
    ignored: Counter[str],
) -> Iterator[tuple[ValidRecord, tuple[int, int]]]:
    """Valid, first-of-their-id records in source order; problems go to the checkpoint as met.

    Each record comes with ``(file index, bytes of it read)`` so batches know how far the source is
    settled. Files wholly before the resume cursor are not even opened.
    """
    for item in _after_cursor(files, options.records_keys, rules.fields.content, cursor):
        file = item.file
        if not isinstance(item, RawRecord):
            issue = Issue("error", item.code, item.reason)
            if item.fatal:
                checkpoint.add_problem(file.index, _FILE_PROBLEM, item.line, None, issue)
                checkpoint.note_fatal(file.index, item.reason)
            else:
                checkpoint.add_problem(file.index, item.position, item.line, None, issue)
                checkpoint.note_record(file.index, item.position)
            continue
        checked = validate(item, rules)
        first_time = checkpoint.note_record(
            file.index, item.position, {"unknown_model_embeddings": int(checked.unknown_model_vector)}
        )
        if first_time:
            ignored.update(checked.ignored_fields)
        for issue in checked.issues:
            checkpoint.add_problem(file.index, item.position, item.line, checked.id, issue)
        record = checked.record
        if record is None:
            continue
        first = checkpoint.claim(record.id, file.index, item.position)
        if first is not None:
            where = files[first[0]].display
            checkpoint.add_problem(
                file.index,
                item.position,
                item.line,
                record.id,
                Issue(
                    "error",
                    "duplicate_id",
                    f"the id {record.id!r} already appeared in {where} (record {first[1]}); "
                    "the first one was migrated",
                ),
            )
            continue
        yield record, (file.index, item.end_offset)


def _count_records(files: Sequence[SourceFile], options: MigrationOptions, cursor: Cursor | None) -> int:
    """Records the source still holds after ``cursor``: what a bulk load is sized by.

    One parsing pass without validation. Bytes per record would be cheaper, but they are not a count:
    three small records beside one oversize file estimated 13,983 and dropped the index.
    """
    items = _after_cursor(files, options.records_keys, options.fields.content, cursor)
    return sum(1 for item in items if isinstance(item, RawRecord))


def _after_cursor(
    files: Sequence[SourceFile],
    records_keys: Sequence[str],
    content_fields: Sequence[str],
    cursor: Cursor | None,
) -> Iterator[RawRecord | ReadProblem]:
    """What the files hold past ``cursor``; files wholly before it are not even opened."""
    for file in files:
        if cursor is not None and file.index < cursor.file_index:
            continue
        for item in read_records(file, records_keys=records_keys, content_fields=content_fields):
            if (
                isinstance(item, RawRecord)
                and cursor is not None
                and file.index == cursor.file_index
                and item.position <= cursor.position
            ):
                continue
            yield item


# --------------------------------------------------------------------------------------------------
# The run


def migrate(
    paths: Sequence[str | os.PathLike[str]] | None,
    store: VectorStore,
    *,
    dry_run: bool = False,
    resume: str | bool = False,
    run_id: str | None = None,
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
    fields: FieldMap | None = None,
    records_keys: Sequence[str] = DEFAULT_RECORDS_KEYS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    embeddings_model: str | None = None,
    embedding_mismatch: EmbeddingPolicy = "recompute",
    max_metadata_depth: int = DEFAULT_MAX_METADATA_DEPTH,
    backup: bool = True,
    verify: bool = True,
    bulk_load: bool | None = None,
    retry: Retry | None = None,
    progress: Progress | None = None,
) -> MigrationReport:
    """Move the JSON documents under ``paths`` into ``store``; see ``docs/decisions/0006-json-migration.md``.

    Every good record lands exactly once; every bad one is listed (file, position, reason) in the
    returned report and in ``<state_dir>/<run id>/report.json``. ``resume=True`` (or a run id)
    continues an interrupted run from its checkpoint, with the paths and reading options it started
    with. Ctrl-C stops after the batch being written, records the run as interrupted and re-raises
    ``KeyboardInterrupt``; a failure (the database gone for longer than the retries) re-raises the
    error; both can be resumed. A dry run reads, validates and looks records up, and writes nothing.
    """
    settings = store.settings()
    state_root = Path(state_dir)
    overrides: dict[str, Any] = {
        "batch_size": batch_size,
        "workers": workers,
        "backup": backup,
        "verify": verify,
        "bulk_load": bulk_load,
        "retry": retry or Retry(),
    }
    if resume:
        if dry_run:
            raise InvalidInputError("a dry run cannot resume a run")
        run_id = resume if isinstance(resume, str) else find_resumable(state_root)
        if run_id is None:
            raise InvalidInputError(f"no unfinished run to resume in {state_root}")
        run_dir = state_root / run_id
        if not (run_dir / _CHECKPOINT).is_file():
            raise InvalidInputError(f"no run {run_id} in {state_root} (looked for {run_dir / _CHECKPOINT})")
        checkpoint = Checkpoint(run_dir / _CHECKPOINT)
        try:
            if checkpoint.get("status") == "completed":
                raise InvalidInputError(f"run {run_id} already completed; nothing to resume")
            options = MigrationOptions.from_json(checkpoint.get("options"), **overrides)
            recorded = [str(p) for p in checkpoint.get("paths")]
            if paths and [Path(p).resolve() for p in paths] != [Path(p).resolve() for p in recorded]:
                raise InvalidInputError(
                    f"run {run_id} migrated {', '.join(recorded)}; "
                    "resume it without paths or with the same ones"
                )
            files = discover(recorded)
        except BaseException:
            checkpoint.close()
            raise
        source_paths: list[str] = recorded
    else:
        if not paths:
            raise InvalidInputError("no source paths given")
        options = MigrationOptions(
            fields=fields or FieldMap(),
            records_keys=tuple(records_keys),
            embeddings_model=embeddings_model,
            embedding_mismatch=embedding_mismatch,
            max_metadata_depth=max_metadata_depth,
            **overrides,
        )
        files = discover(paths)
        source_paths = [str(p) for p in paths]
        run_id = run_id or new_run_id()
        if dry_run:
            run_dir = Path(tempfile.mkdtemp(prefix="supa-vectors-dry-run-"))
        else:
            run_dir = state_root / run_id
            if run_dir.exists():
                raise InvalidInputError(f"{run_dir} exists already; pick another run id, or resume it")
        checkpoint = None
    if options.batch_size > settings.max_batch_size:
        raise InvalidInputError(
            f"batch_size is {options.batch_size}; the store takes at most {settings.max_batch_size} per call"
        )
    embedder: EmbedderLike | None = None
    if not dry_run:
        embedder = store.embedder
        check_embedder(embedder, settings)
    if checkpoint is None:
        run_dir.mkdir(parents=True, exist_ok=dry_run)
        checkpoint = Checkpoint(run_dir / _CHECKPOINT)
        checkpoint.set("run_id", run_id)
        checkpoint.set("paths", source_paths)
        checkpoint.set("options", options.as_json())
        checkpoint.set("status", "running")
    try:
        return _Run(
            store=store,
            embedder=embedder,
            settings=settings,
            files=files,
            paths=source_paths,
            run_id=run_id,
            run_dir=run_dir,
            checkpoint=checkpoint,
            options=options,
            progress=progress or NullProgress(),
            dry_run=dry_run,
            resumed=bool(resume),
        ).run()
    finally:
        checkpoint.close()
        if dry_run:
            shutil.rmtree(run_dir, ignore_errors=True)


class _Run:
    def __init__(
        self,
        *,
        store: VectorStore,
        embedder: EmbedderLike | None,
        settings: StoreSettings,
        files: list[SourceFile],
        paths: list[str],
        run_id: str,
        run_dir: Path,
        checkpoint: Checkpoint,
        options: MigrationOptions,
        progress: Progress,
        dry_run: bool,
        resumed: bool,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.files = files
        self.paths = paths
        self.run_id = run_id
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.options = options
        self.progress = progress
        self.dry_run = dry_run
        self.resumed = resumed
        self.rules = Rules(
            settings=settings,
            fields=options.fields,
            embeddings_model=options.embeddings_model,
            embedding_mismatch=options.embedding_mismatch,
            max_metadata_depth=options.max_metadata_depth,
        )
        self.started_at = datetime.now(timezone.utc)
        self.clock = time.monotonic()
        self.backup: Backup | None = None
        self.bulk_loading = False
        self.ignored: Counter[str] = Counter()

    # -- stages --------------------------------------------------------------------------------

    def run(self) -> MigrationReport:
        files = self.files
        pipeline: _Pipeline | None = None
        status = "dry_run" if self.dry_run else "completed"
        error: BaseException | None = None
        documents = 0
        starts = [0]
        for file in files:
            starts.append(starts[-1] + file.size)
        self.progress.start(
            total_bytes=starts[-1], files=len(files), run_id=self.run_id, resumed=self.resumed
        )
        try:
            hashes = self._checksums(files)
            for file, sha in zip(files, hashes, strict=True):
                self.checkpoint.add_file(file.index, file.display, file.key, file.size, sha)
            if not self.dry_run:
                self._begin()
            pipeline = _Pipeline(
                store=self.store,
                embedder=self.embedder,
                settings=self.settings,
                checkpoint=self.checkpoint,
                files=files,
                run_id=self.run_id,
                options=self.options,
                progress=self.progress,
                dry_run=self.dry_run,
            )
            pipeline.checksums = hashes
            with _deferred_interrupt(pipeline.interrupted):
                pipeline.start()
                with contextlib.suppress(_Stopped):  # the pipeline's failure says why
                    self._feed(files, starts, self.checkpoint.cursor(), pipeline)
                pipeline.close()
            if pipeline.failure is not None:
                raise pipeline.failure
        except KeyboardInterrupt as exc:
            status, error = "interrupted", exc
        except BaseException as exc:
            status, error = "failed", exc
        finally:
            if pipeline is not None:
                if error is not None:
                    pipeline.abort()
                documents = pipeline.documents
            self.checkpoint.flush()
            self.progress.finish()
        # With the database unreachable, every further call would only wait out the pool's timeout.
        reachable = not isinstance(error, BackendUnavailableError | QueryTimeoutError)
        if reachable:
            self._finish_bulk_load()
        verify_report = None
        if error is None and not self.dry_run and self.options.verify:
            self.progress.note("checking every record against the store")
            verify_report = verify_files(
                files, self.store.transport, self.rules, records_keys=self.options.records_keys
            )
        report = self._report(files, status, verify_report, documents, error)
        if not self.dry_run:
            self.checkpoint.set("status", status)
            if reachable:
                report = self._end(status, report)
            path = self.run_dir / "report.json"
            report = report.model_copy(update={"report_path": str(path)})
            write_json_report(report, path, self._problems(files))
        if error is not None:
            raise error
        return report

    def _checksums(self, files: Sequence[SourceFile]) -> list[str]:
        recorded = self.checkpoint.file_hashes()
        if self.options.backup and not self.dry_run and not (self.run_dir / "backup.tar.gz").exists():
            self.progress.note(f"backing up {len(files)} files to {self.run_dir / 'backup.tar.gz'}")
            self.backup, hashes = create_backup(files, self.run_dir, self.run_id)
        else:
            hashes = checksums(files)
            if (self.run_dir / "backup.tar.gz").exists():
                self.backup = Backup(self.run_dir / "backup.tar.gz", self.run_dir / "manifest.json")
        if recorded:
            now = {f.index: (f.display, h) for f, h in zip(files, hashes, strict=True)}
            if now != recorded:
                changed = sorted(
                    {d for i, (d, h) in recorded.items() if now.get(i) != (d, h)}
                    | {d for i, (d, h) in now.items() if recorded.get(i) != (d, h)}
                )
                raise InvalidInputError(
                    f"the source changed since run {self.run_id} started ({', '.join(changed[:5])}"
                    + (" ..." if len(changed) > 5 else "")
                    + "); its checkpoint no longer applies. Start a new run: what landed stays, and "
                    "unchanged records are skipped"
                )
        return hashes

    def _begin(self) -> None:
        params = {
            "run_id": self.run_id,
            "sources": {"paths": [str(p) for p in self.paths], "files": len(self.files)},
            "options": self.options.as_json(),
        }
        call(self.store.transport.rpc, rpcs.BEGIN_INGEST_RUN.call(params), self.options.retry)

    def _end(self, status: str, report: MigrationReport) -> MigrationReport:
        """Record how the run ended; take inserted/updated from the store's run history.

        The history counts what this run changed even when a batch was re-sent after a crash (the
        re-sent batch finds its records unchanged), so its totals are exact where the checkpoint's
        per-file counts can be off by that one batch.
        """
        final = {"completed": "completed", "interrupted": "interrupted"}.get(status, "failed")
        summary = report.counts.model_dump() | {"seconds": round(report.seconds, 3)}
        try:
            rows = self.store.transport.rpc(
                rpcs.FINISH_INGEST_RUN.name,
                {"run_id": self.run_id, "final_status": final, "summary": summary},
            )
        except SupaVectorsError:
            # The database may be the reason the run stopped; the checkpoint still has everything.
            return report
        if not isinstance(rows, list) or not rows:
            return report
        inserted, updated = int(rows[0]["inserted"]), int(rows[0]["updated"])
        landed = report.counts.landed
        if inserted + updated > landed:
            return report
        counts = report.counts.model_copy(
            update={"inserted": inserted, "updated": updated, "unchanged": landed - inserted - updated}
        )
        return report.model_copy(update={"counts": counts})

    def _maybe_begin_bulk_load(self, files: Sequence[SourceFile], cursor: Cursor | None) -> None:
        """Before the first write: ask for a bulk load when the records to come are many, else only
        restore an index that an interrupted load (this run's last attempt, say) left dropped."""
        transport = self.store.transport
        if not isinstance(transport, SupportsSessionUser):
            return
        expected = 0 if self.options.bulk_load is False else _count_records(files, self.options, cursor)
        wanted = use_bulk_path(self.options.bulk_load, expected, job=True)
        try:
            if wanted:
                # begin_bulk_load restores an abandoned load's index first, then decides.
                began = transport.rpc_as_session_user(rpcs.BEGIN_BULK_LOAD.name, {"expected_rows": expected})
                self.bulk_loading = bool(began)
            else:
                self._restore_vector_index(transport)
        except (AuthError, NotFoundError):
            self.bulk_loading = False  # not the table owner: load through the index
        except SupaVectorsError as exc:
            if wanted:
                raise
            # Only the restore failed: the batches' own calls report (and retry) an outage.
            self.progress.note(f"could not check the vector index ({exc})")
        if self.bulk_loading:
            self.progress.note(f"bulk load: {expected:,} records, the vector index is rebuilt at the end")

    def _restore_vector_index(self, transport: SupportsSessionUser) -> None:
        if transport.rpc_as_session_user(rpcs.RESTORE_VECTOR_INDEX.name, {}):
            self.progress.note("rebuilt the vector index that an interrupted bulk load had dropped")

    def _finish_bulk_load(self) -> None:
        transport = self.store.transport
        if self.dry_run or not isinstance(transport, SupportsSessionUser):
            return
        try:
            if self.bulk_loading:
                self.progress.note("rebuilding the vector index")
                transport.rpc_as_session_user(rpcs.FINISH_BULK_LOAD.name, {})
            else:
                # A previous attempt of this run may have been killed with the index dropped.
                self._restore_vector_index(transport)
        except SupaVectorsError as exc:
            self.progress.note(
                f"could not rebuild the vector index ({exc}); run the migration again to retry"
            )

    def _feed(
        self, files: Sequence[SourceFile], starts: list[int], cursor: Cursor | None, pipeline: _Pipeline
    ) -> None:
        per_vector = vector_request_bytes(
            self.settings.embedding_dimension, bytes_per_float(self.store.transport)
        )
        placed = _read(files, self.rules, self.options, self.checkpoint, cursor, self.ignored)
        seq = 0
        for chunk, last in cut_chunks(
            placed,
            lambda item: item[0].json_bytes + per_vector,
            max_rows=self.options.batch_size,
            first_rows=_FIRST_BATCH,
        ):
            batch = [record for record, _ in chunk]
            end = batch[-1]
            position = (end.file_index, files[end.file_index].size) if last else chunk[-1][1]
            seq = self._submit(pipeline, seq, batch, starts, position, files)

    def _submit(
        self,
        pipeline: _Pipeline,
        seq: int,
        batch: list[ValidRecord],
        starts: list[int],
        position: tuple[int, int],
        files: Sequence[SourceFile],
    ) -> int:
        if seq == 0 and not self.dry_run:
            self._maybe_begin_bulk_load(files, self.checkpoint.cursor())
        last = batch[-1]
        bytes_done = starts[position[0]] + min(position[1], files[position[0]].size)
        pipeline.submit(
            _Batch(seq=seq + 1, records=batch, cursor=(last.file_index, last.position), bytes_done=bytes_done)
        )
        return seq + 1

    # -- report --------------------------------------------------------------------------------

    def _problems(self, files: Sequence[SourceFile]) -> Iterator[Problem]:
        for stored in self.checkpoint.problems():
            yield _problem(stored, files)

    def _report(
        self,
        files: Sequence[SourceFile],
        status: str,
        verify_report: VerifyReport | None,
        documents_here: int,
        error: BaseException | None,
    ) -> MigrationReport:
        states = self.checkpoint.files()
        counters = self.checkpoint.counters()
        problems: list[Problem] = []
        for stored in self.checkpoint.problems():
            if len(problems) >= MAX_PROBLEMS_IN_MEMORY:
                break
            problems.append(_problem(stored, files))
        totals = self.checkpoint.count_problems()
        file_reports = [
            FileReport(
                path=s.display,
                sha256=s.sha256,
                records=s.records,
                inserted=s.landed.get("inserted", 0),
                updated=s.landed.get("updated", 0),
                unchanged=s.landed.get("unchanged", 0),
                rejected=s.errors - (1 if s.fatal else 0),
                warnings=s.warnings,
                error=s.fatal,
            )
            for s in states
        ]
        counts = Counts(
            files=len(states),
            records=sum(f.records for f in file_reports),
            inserted=sum(f.inserted for f in file_reports),
            updated=sum(f.updated for f in file_reports),
            unchanged=sum(f.unchanged for f in file_reports),
            rejected=sum(f.rejected for f in file_reports),
            warnings=sum(f.warnings for f in file_reports),
            file_errors=sum(1 for f in file_reports if f.error),
            embedded=counters.get("embedded", 0),
            reused_embeddings=counters.get("reused_embeddings", 0),
            unknown_model_embeddings=counters.get("unknown_model_embeddings", 0),
        )
        finished = datetime.now(timezone.utc)
        seconds = time.monotonic() - self.clock
        return MigrationReport(
            run_id=self.run_id,
            status=status,  # type: ignore[arg-type]
            resumed=self.resumed,
            started_at=self.started_at,
            finished_at=finished,
            seconds=seconds,
            documents_per_second=documents_here / seconds if seconds > 0 else 0.0,
            counts=counts,
            files=file_reports,
            problems=problems,
            problems_total=sum(totals.values()),
            ignored_fields=dict(self.ignored),
            bulk_load=self.bulk_loading,
            backup=(
                {"archive": str(self.backup.archive), "manifest": str(self.backup.manifest)}
                if self.backup
                else None
            ),
            verify=verify_report,
            state_dir=None if self.dry_run else str(self.run_dir),
            error=None if error is None or isinstance(error, KeyboardInterrupt) else str(error),
        )


def _problem(stored: StoredProblem, files: Sequence[SourceFile]) -> Problem:
    return Problem(
        file=files[stored.file_index].display if stored.file_index < len(files) else str(stored.file_index),
        position=None if stored.position == _FILE_PROBLEM else stored.position,
        line=stored.line,
        id=stored.id,
        severity=stored.severity,  # type: ignore[arg-type]
        code=stored.code,
        reason=stored.reason,
    )
