"""Section backup: backups and restores stream, so their memory does not grow with the store (decision 0020).

Two store sizes (``SMALL`` and ``LARGE`` = 4x), synthetic documents (a corpus section's opening, 200
characters) with clustered 384-d vectors, service role over the Postgres transport. For each size, in
turn (small, large, small, large, so the machine's load falls on both):

* ``naive export``: the same ``export_documents`` pages collected in a list, as a script that builds
  the archive in memory before writing it would: the baseline, whose memory grows with the store;
* ``backup``: ``VectorStore.backup(path)``;
* ``restore``: ``VectorStore.restore(path)`` into the emptied store (a bulk load: the table owner, an
  empty store), verification included.

Peak traced Python memory (tracemalloc) of each, and the ratio large / small: 1.0 is flat. Durations as
documents per second, backup and restore against the naive export. The load average and the CPU's
vector features are printed by ``python -m bench``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench._common import Report, bench_stack, clustered, load_corpus, ratio, synthetic_content


def _peak(fn: Callable[[], Any]) -> tuple[int, float]:
    """Peak traced bytes and seconds of ``fn()``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


def _naive_export(store: Any) -> list[Any]:
    """Every page of export_documents kept in memory (the baseline)."""
    from supa_vectors._core import rpcs

    rows: list[Any] = []
    after = 0
    while True:
        page = store.transport.rpc(rpcs.EXPORT_DOCUMENTS.name, {"after_id": after, "page_size": 500})
        rows += page
        if len(page) < 500:
            return rows
        after = int(page[-1]["id"])


def run(quick: bool) -> dict[str, float]:
    from supa_vectors import VectorStore

    report = Report("backup")
    small = 500 if quick else 5_000
    sizes = {"small": small, "large": 4 * small}
    texts = [d.content for d in load_corpus()]
    vectors = clustered(sizes["large"], seed=11)
    work = Path(tempfile.mkdtemp(prefix="supa-vectors-bench-backup-", dir="/tmp"))
    report.note(f"{small:,} and {4 * small:,} documents, load average {os.getloadavg()[0]:.2f}")
    peaks: dict[tuple[str, str], list[int]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    try:
        with bench_stack() as url, VectorStore.from_url(url, cache="off", outbox=False) as store:
            for round_ in range(2):
                for size, count in sizes.items():
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("truncate public.documents restart identity cascade")
                    store.upsert(
                        [
                            {"id": f"d{i}", "content": synthetic_content(texts, i), "embedding": vectors[i]}
                            for i in range(count)
                        ],
                        bulk=True,
                    )
                    archive = work / f"{size}-{round_}"
                    for what, fn in (
                        ("naive export", lambda: _naive_export(store)),
                        ("backup", lambda a=archive: store.backup(a)),  # type: ignore[misc]
                    ):
                        peak, took = _peak(fn)
                        peaks.setdefault((what, size), []).append(peak)
                        seconds.setdefault((what, size), []).append(took)
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("truncate public.documents restart identity cascade")
                    peak, took = _peak(lambda a=archive: store.restore(a))  # type: ignore[misc]
                    peaks.setdefault(("restore", size), []).append(peak)
                    seconds.setdefault(("restore", size), []).append(took)
                    shutil.rmtree(archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report.heading("peak traced Python memory (the better of 2 rounds), large / small = 4x the documents")
    for what in ("naive export", "backup", "restore"):
        low, high = min(peaks[(what, "small")]), min(peaks[(what, "large")])
        report.figure(f"{what}, {sizes['small']:,} documents", low / 2**20, "MiB")
        report.figure(
            f"{what}, {sizes['large']:,} documents", high / 2**20, "MiB", {"small": ratio(high, low)}
        )
    report.heading(f"throughput at {sizes['large']:,} documents (the better of 2 rounds)")
    naive = sizes["large"] / min(seconds[("naive export", "large")])
    report.figure("naive export", naive, "docs/s")
    for what in ("backup", "restore"):
        rate = sizes["large"] / min(seconds[(what, "large")])
        report.figure(what, rate, "docs/s", {"naive export": ratio(rate, naive)})
    return report.values
