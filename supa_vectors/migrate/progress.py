"""Showing a running migration: a live bar on a terminal, plain log lines in a CI log or a pipe.

Progress is measured in source bytes (known before reading, so the ETA is honest from the first batch)
and shown in documents (what people count). The reporter is called from the writing thread after each
committed batch, so what it shows has landed.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Protocol, TextIO, runtime_checkable

__all__ = ["LogProgress", "NullProgress", "Progress", "progress_for"]


@runtime_checkable
class Progress(Protocol):
    """What the runner reports; implement it to drive your own UI."""

    def start(self, *, total_bytes: int, files: int, run_id: str, resumed: bool) -> None: ...

    def advance(self, *, documents: int, bytes_done: int) -> None:
        """``documents`` landed so far in this process, ``bytes_done`` of the source settled."""
        ...

    def note(self, text: str) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    def start(self, *, total_bytes: int, files: int, run_id: str, resumed: bool) -> None:
        pass

    def advance(self, *, documents: int, bytes_done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LogProgress:
    """One line at most every ``interval`` seconds (and a last one), for logs that are read later."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval
        self._lock = threading.Lock()
        self._started = 0.0
        self._last = 0.0
        self._total = 0
        self._documents = 0
        self._bytes = 0

    def start(self, *, total_bytes: int, files: int, run_id: str, resumed: bool) -> None:
        self._started = self._last = time.monotonic()
        self._total = total_bytes
        verb = "resuming" if resumed else "starting"
        self._write(f"migrate: {verb} run {run_id}: {files} files, {total_bytes:,} bytes")

    def advance(self, *, documents: int, bytes_done: int) -> None:
        with self._lock:
            self._documents, self._bytes = documents, bytes_done
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._write(self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self._documents / elapsed
        share = self._bytes / self._total if self._total else 1.0
        eta = elapsed * (1 - share) / share if share > 0 else float("nan")
        eta_text = _clock(eta) if eta == eta else "?"
        return (
            f"migrate: {self._documents:,} documents ({share:.0%} of the source), "
            f"{rate:,.0f} documents/s, ETA {eta_text}"
        )

    def note(self, text: str) -> None:
        self._write(f"migrate: {text}")

    def finish(self) -> None:
        with self._lock:
            self._write(self._line(time.monotonic()))

    def _write(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


class _RichProgress:
    """rich's live bar: bytes drive the bar and the ETA, documents and documents/s ride along."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self._console = Console(file=stream)
        self._progress = Progress(
            TextColumn("[bold]migrate"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[documents]:,} docs · {task.fields[rate]:,.0f} docs/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
        self._task: Any = None
        self._started = 0.0

    def start(self, *, total_bytes: int, files: int, run_id: str, resumed: bool) -> None:
        self._started = time.monotonic()
        verb = "resuming" if resumed else "starting"
        self._console.print(f"migrate: {verb} run {run_id}: {files} files, {total_bytes:,} bytes")
        self._progress.start()
        self._task = self._progress.add_task("migrate", total=max(total_bytes, 1), documents=0, rate=0.0)

    def advance(self, *, documents: int, bytes_done: int) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._progress.update(self._task, completed=bytes_done, documents=documents, rate=documents / elapsed)

    def note(self, text: str) -> None:
        self._progress.console.print(f"migrate: {text}")

    def finish(self) -> None:
        self._progress.stop()


def progress_for(stream: TextIO | None = None) -> Progress:
    """A live bar when ``stream`` is a terminal and rich is installed, else log lines."""
    stream = stream or sys.stderr
    if stream.isatty():
        try:
            return _RichProgress(stream)
        except ImportError:
            pass
    return LogProgress(stream)
