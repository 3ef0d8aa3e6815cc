"""Turning a decoded source record into a document the store accepts, or saying exactly why not.

Everything the database would refuse is caught here first, per record, so one bad record costs one
line in the report instead of a failed batch: wrong types, empty or oversized content, NUL characters,
metadata jsonb cannot hold or that is nested absurdly deep, and vectors that cannot be reused. The
same rules run in ``migrate`` and ``verify``, so both agree on which records should be in the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from supa_vectors._core.settings import StoreSettings
from supa_vectors._core.upsert import MAX_ID_LENGTH
from supa_vectors._text import json_problem, printable, text_problem
from supa_vectors.errors import InvalidInputError
from supa_vectors.migrate.readers import RawRecord

__all__ = [
    "DEFAULT_MAX_METADATA_DEPTH",
    "EmbeddingPolicy",
    "FieldMap",
    "Issue",
    "Rules",
    "ValidRecord",
    "Validated",
    "derived_id",
    "validate",
]

DEFAULT_MAX_METADATA_DEPTH = 5
EmbeddingPolicy = Literal["recompute", "reject"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class FieldMap:
    """Where a record keeps its parts; each is a list of names tried in order (dots reach into objects).

    The defaults read ``{id, content, metadata}`` records and LangChain-style ``{page_content,
    metadata}`` ones, whose id often sits in ``metadata.doc_id``.
    """

    id: tuple[str, ...] = ("id", "doc_id", "metadata.doc_id")
    content: tuple[str, ...] = ("content", "page_content", "text")
    metadata: tuple[str, ...] = ("metadata",)
    embedding: tuple[str, ...] = ("embedding", "vector")
    embedding_model: tuple[str, ...] = ("embedding_model",)

    def __post_init__(self) -> None:
        for name in ("id", "content", "metadata", "embedding", "embedding_model"):
            names = getattr(self, name)
            if isinstance(names, str):
                object.__setattr__(self, name, (names,))
            elif not getattr(self, name) or not all(
                isinstance(n, str) and n and not text_problem(n, "") for n in getattr(self, name)
            ):
                raise InvalidInputError(
                    f"field names for {name} must be non-empty UTF-8 strings without NUL, got {names!r}"
                )

    def as_json(self) -> dict[str, list[str]]:
        return {
            "id": list(self.id),
            "content": list(self.content),
            "metadata": list(self.metadata),
            "embedding": list(self.embedding),
            "embedding_model": list(self.embedding_model),
        }


@dataclass(frozen=True)
class Rules:
    """What the store accepts (from its settings) plus how the caller wants vectors treated."""

    settings: StoreSettings
    fields: FieldMap = field(default_factory=FieldMap)
    embeddings_model: str | None = None  # the model the files' vectors come from, when they do not say
    embedding_mismatch: EmbeddingPolicy = "recompute"
    max_metadata_depth: int = DEFAULT_MAX_METADATA_DEPTH


@dataclass(frozen=True)
class Issue:
    """One problem with one record (or a whole file): ``error`` keeps it out, ``warning`` does not."""

    severity: Severity
    code: str
    reason: str


@dataclass(frozen=True)
class ValidRecord:
    file_index: int
    position: int
    line: int
    id: str
    content: str
    content_hash: str
    metadata: dict[str, Any]
    embedding: npt.NDArray[np.float32] | None  # reusable vector of the store's model, else None
    json_bytes: int  # rough request size, for batching


@dataclass(frozen=True)
class Validated:
    record: ValidRecord | None
    issues: list[Issue]
    id: str | None  # the id when one could be read, also for rejected records
    ignored_fields: tuple[str, ...] = ()
    unknown_model_vector: bool = False  # a well-formed vector whose model nobody named: re-computed


def derived_id(file_key: str, content: str) -> str:
    """An id for a record without one: stable across runs (same file, same text, same id)."""
    return hashlib.sha256(f"{file_key}\x00{content}".encode()).hexdigest()


_MISSING = object()


def _get(record: Mapping[str, Any], name: str) -> Any:
    if name in record:
        return record[name]
    node: Any = record
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _first(record: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        value = _get(record, name)
        if value is not _MISSING:
            return name, value
    return None, _MISSING


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:39] + "…"
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _vector(
    value: Any, declared: str | None, rules: Rules
) -> tuple[npt.NDArray[np.float32] | None, str | None, bool]:
    """(reusable vector, why it cannot be reused, whether only its model is unknown)."""
    settings = rules.settings
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        return None, "the embedding is not a list of numbers", False
    if len(value) != settings.embedding_dimension:
        return (
            None,
            f"the embedding has {len(value)} dimensions; the store holds {settings.embedding_dimension}-"
            f"dimensional vectors of {settings.embedding_model}",
            False,
        )
    array = np.asarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        return None, "the embedding contains NaN or infinite values", False
    if not array.any():
        return None, "the embedding is all zeros (no direction to compare)", False
    model = declared or rules.embeddings_model
    if model is None:
        return None, None, True
    if model != settings.embedding_model:
        return (
            None,
            f"the embedding comes from {model}; the store holds vectors of {settings.embedding_model}",
            False,
        )
    return array, None, False


def validate(raw: RawRecord, rules: Rules) -> Validated:
    """Check one record; a valid one comes back with its id (derived when missing) and content hash."""
    fields = rules.fields
    value = raw.value
    if not isinstance(value, dict):
        return Validated(
            None, [Issue("error", "not_an_object", f"the record is {_describe(value)}, not an object")], None
        )
    problems: list[tuple[str, str]] = []
    warnings: list[Issue] = []

    content_name, content = _first(value, fields.content)
    if content is _MISSING:
        problems.append(("missing_content", f"no content (looked for {_names(fields.content)})"))
    elif not isinstance(content, str):
        problems.append(("invalid_content", f"{content_name} must be a string, got {_describe(content)}"))
    elif not content.strip():
        problems.append(
            ("empty_content", f"{content_name} is empty" + (" (only whitespace)" if content else ""))
        )
    elif problem := text_problem(content, str(content_name)):
        problems.append(("nul_character" if "\x00" in content else "unencodable_text", problem))
    content_ok = isinstance(content, str) and not problems
    content_bytes = len(content.encode("utf-8")) if content_ok else 0
    if content_ok and content_bytes > rules.settings.max_content_bytes:
        problems.append(
            (
                "content_too_large",
                f"{content_name} has {content_bytes:,} bytes; the store's limit is "
                f"{rules.settings.max_content_bytes:,} (split the document, or raise max_content_bytes "
                "in public.metadata_global: see Limits in the README)",
            )
        )

    id_name, raw_id = _first(value, fields.id)
    doc_id: str | None = None
    if raw_id is _MISSING or raw_id is None:
        if content_ok:
            doc_id = derived_id(raw.file.key, content)
    elif not isinstance(raw_id, str):
        problems.append(("invalid_id", f"{id_name} must be a string, got {_describe(raw_id)}"))
    elif not 1 <= len(raw_id) <= MAX_ID_LENGTH:
        problems.append(("invalid_id", f"{id_name} must have 1 to {MAX_ID_LENGTH} characters"))
    elif problem := text_problem(raw_id, str(id_name)):
        problems.append(("invalid_id", problem))
        if "\x00" not in raw_id:
            doc_id = printable(raw_id)  # the report names the record: escaped, so it can be written
    else:
        doc_id = raw_id

    metadata_name, metadata = _first(value, fields.metadata)
    if metadata is _MISSING or metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        problems.append(("invalid_metadata", f"{metadata_name} must be an object, got {_describe(metadata)}"))
        metadata = {}
    else:
        problem = json_problem(metadata, "metadata", max_depth=rules.max_metadata_depth)
        if problem and "nested deeper" in problem:
            hint = (
                "filters only reach top-level keys, so flatten it or raise the limit (--max-metadata-depth)"
            )
            problems.append(("metadata_too_deep", f"{problem}; {hint}"))
        elif problem:
            problems.append(("invalid_metadata", problem))

    vector: npt.NDArray[np.float32] | None = None
    unknown_model = False
    embedding_name, embedding = _first(value, fields.embedding)
    if embedding is not _MISSING and embedding is not None:
        _, declared = _first(value, fields.embedding_model)
        declared_model = declared if isinstance(declared, str) and declared else None
        vector, why, unknown_model = _vector(embedding, declared_model, rules)
        if why is not None:
            if rules.embedding_mismatch == "reject":
                problems.append(("embedding_mismatch", f"{why} (--embedding-mismatch reject)"))
            else:
                warnings.append(Issue("warning", "embedding_recomputed", f"{why}; it was re-computed"))

    used = {
        name.split(".", 1)[0]
        for name in (content_name, id_name, metadata_name, embedding_name)
        if name is not None
    }
    used.update(n.split(".", 1)[0] for n in fields.embedding_model)
    ignored = tuple(sorted(printable(k) for k in value if k not in used))

    if problems:
        code = problems[0][0]
        reason = "; ".join(p[1] for p in problems)
        return Validated(None, [Issue("error", code, reason), *warnings], doc_id, ignored)
    assert isinstance(content, str)
    assert doc_id is not None
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    record = ValidRecord(
        file_index=raw.file.index,
        position=raw.position,
        line=raw.line,
        id=doc_id,
        content=content,
        content_hash=digest,
        metadata=metadata,
        embedding=vector,
        json_bytes=content_bytes + len(doc_id) + len(json.dumps(metadata, ensure_ascii=False)) + 300,
    )
    return Validated(record, warnings, doc_id, ignored, unknown_model)


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in names)
