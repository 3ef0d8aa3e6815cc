"""Finding source files and streaming their records, one at a time, whatever their size.

A JSON file is read in chunks and its top-level list is decoded element by element, so a 1 GB export
costs the memory of its largest record, not of the file. What a file can hold:

* a list of records: ``[{...}, {...}]``;
* an object holding such a list under a records key (``{"documents": [...]}``), other keys ignored;
* one record as an object (a store that wrote one file per document);
* ``.jsonl``: one record per line, where a bad line is one bad record and the next line still counts.

Problems are yielded in stream order, as :class:`ReadProblem`: a bad line of a ``.jsonl`` file is a
per-record problem, while a file that cannot be parsed further (truncated, not UTF-8, empty, not a
list) ends that file with a ``fatal`` problem after the records read before it.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from supa_vectors._text import parse_int, printable
from supa_vectors.errors import InvalidInputError

__all__ = [
    "DEFAULT_RECORDS_KEYS",
    "SUFFIXES",
    "RawRecord",
    "ReadProblem",
    "SourceFile",
    "discover",
    "read_records",
]

SUFFIXES = (".json", ".jsonl")
DEFAULT_RECORDS_KEYS = ("documents", "records", "docs", "data", "items")
_CHUNK = 1 << 16
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class SourceFile:
    """One file to migrate.

    ``key`` (the path below the argument it was found under, POSIX style) is what derived ids and
    checkpoints use, so they do not depend on the current directory; ``display`` is how the
    report and ``document_metadata.source_file`` name it.
    """

    index: int
    path: Path
    key: str
    display: str
    size: int


@dataclass(frozen=True)
class RawRecord:
    """A decoded record before validation; ``position`` counts records in the file from 0."""

    file: SourceFile
    position: int
    line: int
    value: Any
    end_offset: int  # bytes of the file consumed once this record was read (for progress)


@dataclass(frozen=True)
class ReadProblem:
    """Something in a file that is not a readable record; ``fatal`` ends the file."""

    file: SourceFile
    position: int
    line: int | None
    reason: str
    fatal: bool
    code: str
    end_offset: int


def discover(paths: Sequence[str | os.PathLike[str]]) -> list[SourceFile]:
    """Every ``.json``/``.jsonl`` file under ``paths``, in a stable order (sorted per argument).

    Hidden directories are skipped (the migration's own state lives in ``.supa-vectors``). A file
    named twice is read once.
    """
    if not paths:
        raise InvalidInputError("no source paths given")
    found: list[tuple[Path, str, str]] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise InvalidInputError(f"{given}: no such file or directory")
        if root.is_file():
            candidates = [(root, root.name)]
        else:
            candidates = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.endswith(SUFFIXES):
                        full = Path(dirpath) / name
                        candidates.append((full, full.relative_to(root).as_posix()))
            candidates.sort(key=lambda item: item[1])
        for full, key in candidates:
            if root.is_file() and not full.name.endswith(SUFFIXES):
                raise InvalidInputError(f"{given}: not a .json or .jsonl file")
            resolved = full.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            display = str(full) if root.is_dir() else str(root)
            # A file name that is not UTF-8 is still read; its key (in derived ids and checkpoints) and
            # its name in the report and the store show the undecodable bytes as escapes.
            found.append((full, printable(key), printable(display)))
    return [
        SourceFile(index=i, path=path, key=key, display=display, size=path.stat().st_size)
        for i, (path, key, display) in enumerate(found)
    ]


def read_records(
    file: SourceFile,
    *,
    records_keys: Iterable[str] = DEFAULT_RECORDS_KEYS,
    content_fields: Iterable[str] = ("content", "page_content", "text"),
) -> Iterator[RawRecord | ReadProblem]:
    """The records of one file in order, with the problems met on the way (see the module doc).

    ``content_fields`` tells a top-level object that is one record from an object holding a list
    under a key this reader was not told about.
    """
    if file.path.suffix == ".jsonl":
        yield from _read_jsonl(file)
    else:
        yield from _JsonReader(file, tuple(records_keys), tuple(content_fields)).records()


# --------------------------------------------------------------------------------------------------
# .jsonl


def _read_jsonl(file: SourceFile) -> Iterator[RawRecord | ReadProblem]:
    position = 0
    offset = 0
    decoder = json.JSONDecoder(parse_int=parse_int)
    try:
        handle = file.path.open("rb")
    except OSError as exc:
        yield ReadProblem(file, 0, None, f"cannot open the file: {exc}", True, "unreadable", 0)
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            offset += len(raw)
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield ReadProblem(
                    file,
                    position,
                    number,
                    f"line {number} is not valid UTF-8 (byte {exc.start} of the line); re-encode it as UTF-8",
                    False,
                    "not_utf8",
                    offset,
                )
                position += 1
                continue
            try:
                value, end = decoder.raw_decode(text.strip())
                if end != len(text.strip()):
                    raise json.JSONDecodeError("extra data after the record", text.strip(), end)
            except json.JSONDecodeError as exc:
                yield ReadProblem(
                    file, position, number, f"line {number} is not JSON: {exc}", False, "invalid_json", offset
                )
                position += 1
                continue
            except RecursionError:
                yield ReadProblem(
                    file, position, number, _TOO_DEEP.format(f"line {number}"), False, "too_deep", offset
                )
                position += 1
                continue
            yield RawRecord(file, position, number, value, offset)
            position += 1
    if position == 0:
        yield ReadProblem(file, 0, None, "the file holds no records", True, "empty", offset)


# --------------------------------------------------------------------------------------------------
# .json


class _Truncated(Exception):
    """The file ended inside a value."""


class _TooDeep(Exception):
    """A value nested deeper than Python's JSON parser goes; it was skipped."""


_TOO_DEEP = "{} is nested too deeply (about 1,000 levels) for the JSON parser; flatten it"


class _Syntax(Exception):
    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class _JsonReader:
    """Incremental reader of one JSON file's top-level list (or object holding one).

    ``buf[pos:]`` is decoded text not consumed yet. ``json.JSONDecoder.raw_decode`` parses one value
    at ``pos``; when it fails before the end of the file the buffer may simply end too early, so more
    is read (doubling, so a huge record costs O(n log n), not O(n²)) and the decode retried.
    """

    def __init__(
        self, file: SourceFile, records_keys: tuple[str, ...], content_fields: tuple[str, ...]
    ) -> None:
        self.file = file
        self.records_keys = records_keys
        self.content_fields = content_fields
        self.decoder = json.JSONDecoder(parse_int=parse_int)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.handle: IO[bytes] | None = None
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.bytes_read = 0
        self.lines_before = 1  # line number at buf[0]
        self.position = 0

    # -- low level -------------------------------------------------------------------------------

    def _fill(self, at_least: int = _CHUNK) -> bool:
        """Append decoded text; False at the end of the file. Raises UnicodeDecodeError."""
        if self.eof:
            return False
        assert self.handle is not None
        if self.pos > _CHUNK:
            self.lines_before += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos :]
            self.pos = 0
        data = self.handle.read(max(at_least, _CHUNK))
        start = self.bytes_read
        self.bytes_read += len(data)
        if not data:
            self.eof = True
            try:
                self.buf += self.utf8.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise UnicodeDecodeError(exc.encoding, exc.object, start, start + 1, exc.reason) from None
            return False
        if start == 0 and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
            start += len(codecs.BOM_UTF8)
        try:
            self.buf += self.utf8.decode(data)
        except UnicodeDecodeError as exc:
            # The decoder may hold back up to 3 bytes of an unfinished character from the last chunk.
            raise UnicodeDecodeError(
                exc.encoding, data, max(0, start + exc.start), start + exc.end, exc.reason
            ) from None
        return True

    def _peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), consuming whitespace."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def _line(self) -> int:
        return self.lines_before + self.buf.count("\n", 0, self.pos)

    def _value(self) -> Any:
        """Decode one value at pos, reading more while the buffer may end inside it."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except RecursionError:
                self._skip_value()
                raise _TooDeep() from None
            except json.JSONDecodeError as exc:
                if self.eof:
                    if exc.pos >= len(self.buf) - 1 or exc.msg.startswith("Unterminated"):
                        raise _Truncated() from None
                    raise _Syntax(exc.msg, exc.pos) from None
                # A real syntax error well inside the buffer needs no more data to be certain.
                if exc.pos < len(self.buf) - 8 and not exc.msg.startswith(("Unterminated", "Invalid \\")):
                    raise _Syntax(exc.msg, exc.pos) from None
                self._fill(len(self.buf) - self.pos)
                continue
            if end >= len(self.buf) and not self.eof:
                # A number (or literal) may continue in the next chunk: 12|34.
                self._fill(len(self.buf) - self.pos)
                continue
            self.pos = end
            return value

    def _skip_value(self) -> None:
        """Move past the array or object at pos without decoding it (brackets outside strings)."""
        depth, in_string, escaped = 0, False, False
        while True:
            while self.pos >= len(self.buf):
                if not self._fill():
                    raise _Truncated()
            char = self.buf[self.pos]
            self.pos += 1
            if escaped:
                escaped = False
            elif in_string:
                escaped, in_string = char == "\\", char != '"'
            elif char == '"':
                in_string = True
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
                if depth == 0:
                    return

    def _offset(self) -> int:
        """Approximate bytes consumed so far (exact for ASCII), for progress only."""
        unread = len(self.buf) - self.pos
        return max(0, self.bytes_read - unread)

    # -- structure -------------------------------------------------------------------------------

    def records(self) -> Iterator[RawRecord | ReadProblem]:
        try:
            self.handle = self.file.path.open("rb")
        except OSError as exc:
            yield self._problem(f"cannot open the file: {exc}", "unreadable")
            return
        try:
            yield from self._records()
        except UnicodeDecodeError as exc:
            yield self._problem(
                f"the file is not valid UTF-8 (at byte {exc.start}); re-encode it as UTF-8", "not_utf8"
            )
        except _TooDeep:
            yield self._problem(_TOO_DEEP.format(f"the value at line {self._line()}"), "too_deep")
        except _Truncated:
            yield self._problem(
                f"the file ends in the middle of record {self.position} (truncated JSON)", "truncated"
            )
        except _Syntax as exc:
            self.pos = exc.index
            yield self._problem(f"invalid JSON at line {self._line()}: {exc}", "invalid_json")
        finally:
            self.handle.close()

    def _records(self) -> Iterator[RawRecord | ReadProblem]:
        first = self._peek()
        if first == "":
            yield self._problem("the file is empty", "empty")
        elif first == "[":
            yield from self._array()
        elif first == "{":
            yield from self._object()
        else:
            value = self._value()
            yield self._problem(
                f"the top level is {_json_type(value)}, not a list of records "
                f'(or an object holding one, like {{"documents": [...]}})',
                "not_a_list",
            )
            return
        if self._peek() != "":
            raise _Syntax("extra data after the top-level value", self.pos)

    def _array(self) -> Iterator[RawRecord | ReadProblem]:
        self.pos += 1  # [
        if self._peek() == "]":
            self.pos += 1
            return
        while True:
            line = self._line()
            try:
                yield RawRecord(self.file, self.position, line, self._value(), self._offset())
            except _TooDeep:
                reason = _TOO_DEEP.format(f"record {self.position} (line {line})")
                yield ReadProblem(self.file, self.position, line, reason, False, "too_deep", self._offset())
            self.position += 1
            separator = self._peek()
            if separator == ",":
                self.pos += 1
                if self._peek() == "":
                    raise _Truncated()
                continue
            if separator == "]":
                self.pos += 1
                return
            if separator == "":
                raise _Truncated()
            raise _Syntax("expected ',' or ']' after a record", self.pos)

    def _object(self) -> Iterator[RawRecord | ReadProblem]:
        self.pos += 1  # {
        fields: dict[str, Any] = {}
        found_list = False
        start_line = self._line()
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                if self._peek() != '"':
                    if self._peek() == "":
                        raise _Truncated()
                    raise _Syntax("expected a key", self.pos)
                key = self._value()
                if self._peek() != ":":
                    if self._peek() == "":
                        raise _Truncated()
                    raise _Syntax("expected ':' after a key", self.pos)
                self.pos += 1
                nxt = self._peek()
                if nxt == "":
                    raise _Truncated()
                if not found_list and key in self.records_keys and nxt == "[":
                    found_list = True
                    yield from self._array()
                else:
                    fields[key] = self._value()
                separator = self._peek()
                if separator == ",":
                    self.pos += 1
                    continue
                if separator == "}":
                    self.pos += 1
                    break
                if separator == "":
                    raise _Truncated()
                raise _Syntax("expected ',' or '}' in the top-level object", self.pos)
        if found_list:
            return
        looks_like_a_record = any(k in fields for k in self.content_fields)
        if not looks_like_a_record and any(isinstance(v, list) for v in fields.values()):
            names = ", ".join(sorted(k for k, v in fields.items() if isinstance(v, list)))
            yield self._problem(
                f"the top-level object has no list under {_keys(self.records_keys)} (lists found under: "
                f"{names}; name one with --records-key)",
                "not_a_list",
            )
            return
        if not fields:
            yield self._problem("the top-level object is empty", "empty")
            return
        # One record per file.
        yield RawRecord(self.file, 0, start_line, fields, self._offset())
        self.position = 1

    def _problem(self, reason: str, code: str) -> ReadProblem:
        return ReadProblem(
            self.file,
            self.position,
            self._line() if self.buf else None,
            reason,
            True,
            code,
            self.file.size,
        )


def _keys(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__
