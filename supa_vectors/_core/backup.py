"""Backups that restore: the archive format, and the backup and restore flows (decision 0020).

An archive is a directory: ``manifest.json`` (format version, the store's model, dimension and schema
version, counts, and the SHA-256 and size of every other file) and shards ``documents-NNNNNN.jsonl``,
one document a line: its id, owner, content, content hash, metadata, system metadata and its vector as
base64 of little-endian float32 (exact, and a quarter of the size of JSON numbers). Plain files, so an
archive moves between projects, Postgres versions and machines, and ``tar``/``gzip``/``sha256sum`` work
on it.

Both directions stream: a backup writes each page as it arrives, a restore reads one line at a time
and holds one ``bulk_upsert`` chunk, so memory does not grow with the store (``bench/backup.py``).

Consistency (one snapshot) without a transaction that outlives a call: every exported row carries a
version, and ``export_snapshot()`` returns, from one statement, the count and XOR of the versions of
everything the caller would back up. If they equal what the archive holds, nothing changed between each
page and that statement: the archive is the store as it was at that instant. Otherwise the backup is
taken again (``attempts``), and a store that never holds still long enough gets a ``BackupError``.

A restore checks the whole archive (every checksum, every record) before it writes anything, writes
through ``bulk_upsert`` in transactional chunks with the archived vectors (never the model), and then
reads the documents back to compare content hashes and vectors with the archive. It resumes by being
idempotent: ``bulk_upsert`` is keyed by (owner, id) and reports content it already holds
``unchanged``, so running it again after a crash finishes the job without duplicates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from supa_vectors._core import rpcs
from supa_vectors._core.ops import Flow
from supa_vectors._core.rows import _response, _rows
from supa_vectors._core.settings import StoreSettings
from supa_vectors._core.upsert import (
    JSON_BYTES_PER_FLOAT,
    MAX_ROWS_PER_REQUEST,
    content_hash,
    cut_chunks,
    send_chunk,
    vector_request_bytes,
)
from supa_vectors._files import sha256_of_file
from supa_vectors._models import BackupResult, RestoreResult
from supa_vectors._text import json_problem, text_problem
from supa_vectors.errors import (
    ArchiveError,
    BackendError,
    BackupError,
    DocumentError,
    InvalidInputError,
    ModelMismatchError,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "Progress",
    "backup_flow",
    "read_archive",
    "restore_flow",
]

FORMAT = "supa-vectors-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTOR_ENCODING = "float32-le-base64"
# Documents per shard: small enough that a damaged file costs little, large enough that a store of
# millions is hundreds of files, not millions.
SHARD_DOCUMENTS = 10_000
EXPORT_PAGE_SIZE = 500
BACKUP_ATTEMPTS = 3
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_SHARD = re.compile(r"documents-\d{6}\.jsonl")

# (documents written, documents in the archive): called by a restore after each chunk it wrote.
Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------ archive


def encode_vector(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str, dimension: int) -> npt.NDArray[np.float32]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 4 * dimension:
        raise ValueError(f"the vector has {len(raw) // 4} dimensions, not {dimension}")
    array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("the vector holds NaN or infinity")
    return array


def _stored_vector(value: Any, dimension: int) -> npt.NDArray[np.float32] | None:
    """A vector as the transports return ``export_documents``' (a vector RPC): a float32 array, decoded
    from binary (Postgres) or from pgvector's text (PostgREST), checked against the store's dimension."""
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float32)
    if array.shape != (dimension,):
        raise BackendError(f"{rpcs.EXPORT_DOCUMENTS.name} returned a vector of shape {array.shape}")
    return array


@dataclass(frozen=True)
class ArchivedDocument:
    """One line of a shard, checked."""

    id: str
    owner_id: str | None
    content: str
    content_hash: str
    metadata: dict[str, Any]
    system: dict[str, Any] | None
    embedding: npt.NDArray[np.float32] | None

    def as_json(self, *, keep_owner: bool) -> dict[str, Any]:
        """The record ``bulk_upsert`` takes; the owner only when the caller may write any owner's rows
        (the service role); a user's restore writes every document as that user (RLS enforces it)."""
        record: dict[str, Any] = {"external_id": self.id, "content": self.content, "metadata": self.metadata}
        if self.system is not None:
            record["system"] = self.system
        if keep_owner:
            record["owner_id"] = self.owner_id
        return record


class _ShardWriter:
    """Writes shards of at most ``shard_size`` lines, hashing each as it is written."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self._directory = directory
        self._shard_size = shard_size
        self._handle: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._lines = 0
        self.files: list[dict[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        if self._handle is None:
            name = f"documents-{len(self.files) + 1:06d}.jsonl"  # _SHARD
            # Private, like the cache: an archive holds every document's text.
            self._handle = os.fdopen(os.open(self._directory / name, _NEW_FILE, 0o600), "wb")
            self.files.append({"name": name})
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self._handle.write(line)
        self._digest.update(line)
        self._bytes += len(line)
        self._lines += 1
        if self._lines >= self._shard_size:
            self.close()

    def close(self) -> None:
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self.files[-1].update(sha256=self._digest.hexdigest(), bytes=self._bytes, documents=self._lines)
        self._handle, self._digest, self._bytes, self._lines = None, hashlib.sha256(), 0, 0


def _archive_line(row: Mapping[str, Any], dimension: int) -> dict[str, Any]:
    vector = _stored_vector(row.get("embedding"), dimension)
    owner = row.get("owner_id")
    return {
        "id": str(row["external_id"]),
        "owner_id": str(owner).lower() if owner is not None else None,
        "content": str(row["content"]),
        "content_hash": str(row["content_hash"]),
        "metadata": row.get("metadata") or {},
        "system": row.get("system"),
        "updated_at": str(row["updated_at"]) if row.get("updated_at") is not None else None,
        "embedding": encode_vector(vector) if vector is not None else None,
    }


def _write_json(path: Path, value: Any) -> None:
    with os.fdopen(os.open(path, _NEW_FILE, 0o600), "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------------- backup


def _target_directory(path: Path) -> Path:
    """Where the archive is written before it is renamed to ``path``: ``<path>.partial``, which an
    interrupted backup may have left; anything else there is not ours to delete."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInputError(f"{path} already exists and is not an empty directory; back up to a new path")
    partial = path.parent / (path.name + ".partial")
    if partial.exists() and not (
        partial.is_dir() and all(_SHARD.fullmatch(p.name) or p.name == MANIFEST for p in partial.iterdir())
    ):
        raise InvalidInputError(f"{partial} exists and is not an interrupted backup; move it away first")
    return partial


def _export_pass(
    partial: Path, settings: StoreSettings, page_size: int, shard_size: int
) -> Flow[tuple[int, int, list[dict[str, Any]]]]:
    """Every page of ``export_documents`` into shards; returns the count, the XOR of the row versions
    and the shards written."""
    writer = _ShardWriter(partial, shard_size)
    count = digest = 0
    after = 0
    try:
        while True:
            reply = yield rpcs.EXPORT_DOCUMENTS.call({"after_id": after, "page_size": page_size})
            with _response(rpcs.EXPORT_DOCUMENTS.name):
                rows = _rows(reply, rpcs.EXPORT_DOCUMENTS.name)
                for row in rows:
                    writer.write(_archive_line(row, settings.embedding_dimension))
                    digest ^= int(row["version"])
                    after = int(row["id"])
            count += len(rows)
            if len(rows) < page_size:
                break
    finally:
        writer.close()
    return count, digest, writer.files


def backup_flow(
    path: Path,
    settings: StoreSettings,
    *,
    page_size: int = EXPORT_PAGE_SIZE,
    shard_size: int = SHARD_DOCUMENTS,
    attempts: int = BACKUP_ATTEMPTS,
) -> Flow[BackupResult]:
    """Archive the caller's documents at ``path`` (a new or empty directory), as one snapshot.

    The archive is written under ``<path>.partial`` and renamed into place only once the snapshot
    check passed and the manifest is on disk: ``path`` is a whole archive or nothing.
    """
    if not 1 <= page_size <= settings.max_result_rows:
        raise InvalidInputError(f"page_size must be 1 to {settings.max_result_rows}, got {page_size}")
    if shard_size < 1 or attempts < 1:
        raise InvalidInputError("shard_size and attempts must be at least 1")
    path = Path(path)
    partial = _target_directory(path)
    for attempt in range(1, attempts + 1):
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, mode=0o700)
        try:
            count, digest, files = yield from _export_pass(partial, settings, page_size, shard_size)
            snapshot = yield rpcs.EXPORT_SNAPSHOT.call()
            with _response(rpcs.EXPORT_SNAPSHOT.name):
                held = int(snapshot["documents"]), int(snapshot["digest"])
                at, all_owners = str(snapshot["at"]), bool(snapshot["all_owners"])
            if held != (count, digest):
                continue  # a write landed during the pass: take it again
            _write_json(
                partial / MANIFEST,
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "snapshot_at": at,
                    "owners": "all" if all_owners else "caller",
                    "embedding_model": settings.embedding_model,
                    "embedding_dimension": settings.embedding_dimension,
                    "schema_version": settings.schema_version,
                    "vector_encoding": VECTOR_ENCODING,
                    "documents": count,
                    "files": files,
                },
            )
            if path.exists():
                path.rmdir()  # empty (checked above); a rename cannot replace a directory otherwise
            partial.replace(path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return BackupResult(
            path=str(path),
            documents=count,
            files=len(files),
            bytes=sum(int(f["bytes"]) for f in files),
            attempts=attempt,
            snapshot_at=at,
        )
    shutil.rmtree(partial, ignore_errors=True)
    raise BackupError(
        f"the store changed during each of {attempts} backup passes, so no pass is one snapshot; back up "
        "when writes pause, or pass more attempts"
    )


# ------------------------------------------------------------------------------------------ restore


def _manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        raise ArchiveError(f"{path} is not a supa-vectors backup: it has no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArchiveError(f"{file} cannot be read as JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{file} is not a supa-vectors backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("vector_encoding") != VECTOR_ENCODING:
        raise ArchiveError(
            f"{file} has format version {manifest.get('format_version')!r}; this supa-vectors reads "
            f"version {FORMAT_VERSION} (restore with the release that wrote it)"
        )
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("name"), str)
        and Path(f["name"]).name == f["name"]
        and isinstance(f.get("sha256"), str)
        and isinstance(f.get("bytes"), int)
        and isinstance(f.get("documents"), int)
        for f in files
    ):
        raise ArchiveError(f"{file}: 'files' must list each shard's name, sha256, bytes and documents")
    if manifest.get("documents") != sum(f["documents"] for f in files):
        raise ArchiveError(f"{file}: 'documents' is not the sum of the shards' documents")
    return manifest


def _parse_line(line: bytes, dimension: int) -> ArchivedDocument:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("a line is not a JSON object")
    doc_id, content, metadata = record.get("id"), record.get("content"), record.get("metadata")
    owner, system, vector = record.get("owner_id"), record.get("system"), record.get("embedding")
    if not isinstance(doc_id, str) or not isinstance(content, str) or not isinstance(metadata, dict):
        raise ValueError("id and content must be strings, metadata an object")
    if owner is not None and not isinstance(owner, str):
        raise ValueError("owner_id must be a string or null")
    if system is not None and not isinstance(system, dict):
        raise ValueError("system must be an object or null")
    if vector is not None and not isinstance(vector, str):
        raise ValueError("embedding must be base64 text or null")
    problem = (
        text_problem(doc_id, "id") or text_problem(content, "content") or json_problem(metadata, "metadata")
    )
    if problem:
        raise ValueError(problem)
    if content_hash(content) != record.get("content_hash"):
        raise ValueError(f"document {doc_id!r}: its content does not match its content_hash")
    return ArchivedDocument(
        id=doc_id,
        owner_id=owner,
        content=content,
        content_hash=record["content_hash"],
        metadata=metadata,
        system=system,
        embedding=decode_vector(vector, dimension) if vector is not None else None,
    )


def _documents(path: Path, manifest: Mapping[str, Any]) -> Iterator[ArchivedDocument]:
    """Every document of the archive, one line at a time (shards in the manifest's order)."""
    dimension = int(manifest["embedding_dimension"])
    for entry in manifest["files"]:
        file = path / entry["name"]
        with file.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield _parse_line(line, dimension)
                except (ValueError, binascii.Error) as exc:
                    raise ArchiveError(f"{file}, line {number}: {exc}") from exc


def read_archive(path: Path, settings: StoreSettings) -> dict[str, Any]:
    """Check the whole archive before anything is written: the manifest, the store's model and
    dimension, every file's size and SHA-256, and every record (one streamed pass); its manifest."""
    path = Path(path)
    manifest = _manifest(path)
    if (manifest.get("embedding_model"), manifest.get("embedding_dimension")) != (
        settings.embedding_model,
        settings.embedding_dimension,
    ):
        raise ModelMismatchError(
            f"the archive holds {manifest.get('embedding_dimension')}-dimensional vectors of "
            f"{manifest.get('embedding_model')!r}, but this store holds {settings.embedding_dimension}-"
            f"dimensional vectors of {settings.embedding_model!r}"
        )
    for entry in manifest["files"]:
        file = path / entry["name"]
        try:
            sha, size = sha256_of_file(file)
        except OSError as exc:
            raise ArchiveError(f"{file} cannot be read: {exc}") from exc
        if (sha, size) != (entry["sha256"], entry["bytes"]):
            raise ArchiveError(
                f"{file} is damaged: {size} bytes with SHA-256 {sha}, the manifest says {entry['bytes']} "
                f"bytes with SHA-256 {entry['sha256']}; nothing was written"
            )
    seen = 0
    for _ in _documents(path, manifest):
        seen += 1
    if seen != manifest["documents"]:
        raise ArchiveError(f"{path} holds {seen} documents; its manifest says {manifest['documents']}")
    return manifest


def _chunks(
    path: Path, manifest: Mapping[str, Any], keep_owner: bool, chunk_rows: int
) -> Iterator[list[ArchivedDocument]]:
    dimension = int(manifest["embedding_dimension"])
    per_vector = vector_request_bytes(dimension, JSON_BYTES_PER_FLOAT)
    for chunk, _ in cut_chunks(
        _documents(path, manifest),
        lambda d: len(json.dumps(d.as_json(keep_owner=keep_owner))) + per_vector,
        max_rows=chunk_rows,
    ):
        yield chunk


def _compare(doc: ArchivedDocument, row: Mapping[str, Any], dimension: int) -> None:
    """A document as the store returned it against the archive: content hash and vector, exactly."""
    if row["content_hash"] != doc.content_hash:
        raise BackupError(f"after the restore, document {doc.id!r} has other content than the archive")
    stored = _stored_vector(row.get("embedding"), dimension)
    if doc.embedding is not None and (stored is None or stored.tobytes() != doc.embedding.tobytes()):
        raise BackupError(
            f"after the restore, document {doc.id!r} has another vector than the archive (the store "
            "already held the same content with another vector: delete it and restore again)"
        )


def _verify_chunk(
    chunk: list[ArchivedDocument], keep_owner: bool, owner: str | None, dimension: int
) -> Flow[None]:
    """Read ``chunk``'s documents back (the caller's, under the owner the restore wrote them as)."""
    wanted = {(d.owner_id if keep_owner else owner, d.id): d for d in chunk}
    found: set[tuple[str | None, str]] = set()
    after = 0
    ids = sorted({d.id for d in chunk})
    while True:
        reply = yield rpcs.EXPORT_DOCUMENTS.call(
            {"after_id": after, "page_size": MAX_ROWS_PER_REQUEST, "external_ids": ids}
        )
        with _response(rpcs.EXPORT_DOCUMENTS.name):
            rows = _rows(reply, rpcs.EXPORT_DOCUMENTS.name)
            for row in rows:
                after = int(row["id"])
                key = (
                    str(row["owner_id"]).lower() if row.get("owner_id") is not None else None,
                    row["external_id"],
                )
                if (doc := wanted.get(key)) is not None:
                    _compare(doc, row, dimension)
                    found.add(key)
        if len(rows) < MAX_ROWS_PER_REQUEST:
            break
    missing = [key[1] for key in wanted if key not in found]
    if missing:
        raise BackupError(f"after the restore, {len(missing)} documents are missing, first {missing[0]!r}")


def restore_flow(
    path: Path,
    manifest: Mapping[str, Any],
    settings: StoreSettings,
    *,
    chunk_rows: int = MAX_ROWS_PER_REQUEST,
    verify: bool = True,
    progress: Progress | None = None,
) -> Flow[RestoreResult]:
    """Write the archive at ``path``, checked by :func:`read_archive` into ``manifest``, into the
    store (see the module docstring)."""
    if not 1 <= chunk_rows <= min(MAX_ROWS_PER_REQUEST, settings.max_batch_size):
        raise InvalidInputError(f"chunk_rows must be 1 to {MAX_ROWS_PER_REQUEST}, got {chunk_rows}")
    path = Path(path)
    caller = yield rpcs.EXPORT_SNAPSHOT.call()
    with _response(rpcs.EXPORT_SNAPSHOT.name):
        keep_owner = bool(caller["all_owners"])
        owner = str(caller["owner"]).lower() if caller.get("owner") is not None else None
    total = int(manifest["documents"])
    dimension = settings.embedding_dimension
    tally = {"inserted": 0, "updated": 0, "unchanged": 0}
    done = 0
    for chunk in _chunks(path, manifest, keep_owner, chunk_rows):
        vectors = [d.embedding for d in chunk]
        try:
            rows = yield from send_chunk(
                [d.as_json(keep_owner=keep_owner) for d in chunk], list(vectors), dimension, given=vectors
            )
        except DocumentError as exc:
            index = done + exc.index if exc.index is not None else None
            raise DocumentError(f"restoring {path}: {exc}", index=index, document_id=exc.document_id) from exc
        with _response(rpcs.BULK_UPSERT.name):
            for row in rows:
                tally[str(row["status"])] += 1
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    verified = 0
    if verify:
        for chunk in _chunks(path, manifest, keep_owner, MAX_ROWS_PER_REQUEST):
            yield from _verify_chunk(chunk, keep_owner, owner, dimension)
            verified += len(chunk)
    return RestoreResult(path=str(path), documents=total, verified=verified, **tally)
