"""A migration killed for real — by a signal, or by the database dying under it — then resumed.

The migration runs in its own process (``supa-vectors migrate`` through ``migrate_command``, with the
test-suite's ``FakeEmbedder``). To be stopped at a known point, not whenever a timer fires, its embedder
blocks at the start of a chosen batch until the test writes to a FIFO, and the process prints a line
after every committed batch; the test reads those lines (blocking reads, no sleeps). "Mid-batch" means
inside ``bulk_upsert``'s transaction: the test holds a lock on ``public.embeddings`` so the statement
waits after it has inserted the batch's documents, and polls ``pg_stat_activity`` until it does.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest

from supa_vectors.local import LocalStack
from tests.conftest import REPO_ROOT
from tests.test_migrate import rows, scratch_database, write_json

BATCH = 20
FILES = 5
PER_FILE = 40
TOTAL = FILES * PER_FILE

DRIVER = r"""
import signal
import sys
# A terminal's Ctrl-C, whatever this process inherited: a test runner started in the background by a
# non-interactive shell has SIGINT ignored, and its children would ignore the test's SIGINT too.
signal.signal(signal.SIGINT, signal.default_int_handler)
from tests.conftest import FakeEmbedder
from supa_vectors.cli import build_parser
from supa_vectors.cli._migrate import migrate_command

GATE, FIFO = int(sys.argv[1]), sys.argv[2]

class Gated(FakeEmbedder):
    # Blocks at the start of embed call number GATE until the test writes to the FIFO.
    def __init__(self):
        super().__init__()
        self.n = 0

    def embed(self, texts):
        self.n += 1
        if self.n == GATE:
            print("gate", flush=True)
            with open(FIFO) as fifo:
                fifo.read()
        return super().embed(texts)

class Lines:
    def start(self, **kwargs):
        print("start", flush=True)
    def advance(self, *, documents, bytes_done):
        print(f"committed {documents}", flush=True)
    def note(self, text):
        pass
    def finish(self):
        pass

args = build_parser().parse_args(["migrate", *sys.argv[3:]])
sys.exit(migrate_command(args, embedder=Gated(), progress=Lines()))
"""


def corpus(directory: Path) -> Path:
    for f in range(FILES):
        write_json(
            directory / f"part-{f}.json",
            [
                {
                    "id": f"doc-{f}-{i}",
                    "content": f"section {i} of part {f}: words {i * f} and more",
                    "metadata": {"f": f},
                }
                for i in range(PER_FILE)
            ],
        )
    return directory


class Migration:
    """The migration process, its output lines and its gate."""

    def __init__(
        self, url: str, source: Path, state: Path, *, gate: int = 0, extra: tuple[str, ...] = ()
    ) -> None:
        self.fifo = Path(tempfile.mkdtemp()) / "gate"
        os.mkfifo(self.fifo)
        argv = [
            str(source),
            "--database-url",
            url,
            "--state-dir",
            str(state),
            "--batch-size",
            str(BATCH),
            *extra,
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(gate), str(self.fifo), *argv],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def wait_for(self, *wanted: str) -> None:
        """Read output lines until every wanted line has been printed (each read blocks)."""
        missing = set(wanted)
        while missing:
            line = self.stdout.readline()
            assert line, f"the migration ended before printing {missing}: {self.finish()}"
            self.lines.append(line.strip())
            missing.discard(line.strip())

    def open_gate(self) -> None:
        with open(self.fifo, "w") as fifo:
            fifo.write("go")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=300)
        return self.proc.returncode, out, err

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.fifo.parent, ignore_errors=True)


def resume(url: str, source: Path, state: Path, run_id: str) -> tuple[int, str, str]:
    migration = Migration(url, source, state, extra=("--resume", run_id))
    try:
        return migration.finish()
    finally:
        migration.cleanup()


def run_id_in(state: Path) -> str:
    (run,) = [p.name for p in state.iterdir()]
    return run


def wait_for_lock_wait(url: str, what: str) -> int:
    """Poll until a backend running ``what`` waits for a lock; returns its pid."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(6000):
            row = conn.execute(
                "select pid from pg_stat_activity where wait_event_type = 'Lock' and query like %s",
                (f"%{what}%",),
            ).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.01)
    raise AssertionError(f"no backend running {what} waited for a lock")


def wait_for_exit(pid: int) -> None:
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([descriptor], [], [], 60)
        assert readable, f"process {pid} did not exit"
    finally:
        os.close(descriptor)


def assert_exactly_once(url: str, run_id: str) -> None:
    assert rows(url, "select count(*), count(distinct external_id) from public.documents") == [(TOTAL, TOTAL)]
    assert rows(url, "select count(*) from public.embeddings") == [(TOTAL,)]
    expected = {f"doc-{f}-{i}" for f in range(FILES) for i in range(PER_FILE)}
    assert {r[0] for r in rows(url, "select external_id from public.documents")} == expected
    assert rows(url, "select count(*) from public.document_metadata where ingest_run_id = %s", run_id) == [
        (TOTAL,)
    ]
    # The run's history counts each document once, however many attempts it took.
    assert rows(
        url, "select action, count(*) from public.document_history where run_id = %s group by 1", run_id
    ) == [("inserted", TOTAL)]


@pytest.fixture(scope="module")
def crash_db(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "crash") as url:
        yield url


@pytest.fixture
def db(crash_db: str) -> str:
    with psycopg.connect(crash_db, autocommit=True) as conn:
        conn.execute("truncate public.documents, public.ingest_runs restart identity cascade")
    return crash_db


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_signal_mid_run_then_resume_lands_every_document_exactly_once(
    db: str, tmp_path: Path, sig: signal.Signals
) -> None:
    source, state = corpus(tmp_path / "src"), tmp_path / "state"
    migration = Migration(db, source, state, gate=3)
    try:
        migration.wait_for("gate", f"committed {2 * BATCH}")
        migration.proc.send_signal(sig)
        code, _, err = migration.finish()
    finally:
        migration.cleanup()
    run_id = run_id_in(state)
    if sig == signal.SIGINT:
        assert code == 130
        assert f"supa-vectors migrate --resume {run_id}" in err
        report = json.loads((state / run_id / "report.json").read_text())
        assert report["status"] == "interrupted"
        assert report["counts"]["inserted"] == 2 * BATCH
        assert rows(db, "select status from public.ingest_runs") == [("interrupted",)]
    else:
        assert code == -signal.SIGKILL
    assert rows(db, "select count(*) from public.documents") == [(2 * BATCH,)]

    code, out, err = resume(db, source, state, run_id)
    assert code == 0, err
    assert f"{TOTAL} landed ({TOTAL} inserted, 0 updated, 0 unchanged)" in out
    assert "verify passed" in out
    assert_exactly_once(db, run_id)
    assert rows(db, "select status from public.ingest_runs") == [("completed",)]


def test_killed_while_a_batch_is_being_written_then_resumed(db: str, tmp_path: Path) -> None:
    # SIGKILL with bulk_upsert in flight: the batch commits (or not) without the process that sent it,
    # so the checkpoint does not know; the resumed run sends it again and finds it unchanged.
    source, state = corpus(tmp_path / "src"), tmp_path / "state"
    migration = Migration(db, source, state, gate=3)
    try:
        migration.wait_for("gate", f"committed {2 * BATCH}")
        with psycopg.connect(db) as blocker:
            blocker.execute("lock table public.embeddings in share row exclusive mode")
            migration.open_gate()
            backend = wait_for_lock_wait(db, "bulk_upsert")
            migration.proc.kill()
            migration.finish()
        wait_for_exit(backend)  # the orphaned statement ends once the lock is gone
    finally:
        migration.cleanup()
    run_id = run_id_in(state)
    written = rows(db, "select count(*) from public.documents")[0][0]
    assert written in (2 * BATCH, 3 * BATCH)
    assert rows(db, "select count(*) from public.embeddings")[0][0] == written  # never half a batch

    code, out, err = resume(db, source, state, run_id)
    assert code == 0, err
    assert f"{TOTAL} landed ({TOTAL} inserted, 0 updated, 0 unchanged)" in out
    assert_exactly_once(db, run_id)


def test_database_killed_mid_batch_leaves_no_half_batch_and_resume_finishes(
    own_stack: LocalStack, tmp_path: Path
) -> None:
    url = own_stack.start()
    source, state = corpus(tmp_path / "src"), tmp_path / "state"
    migration = Migration(url, source, state, gate=3, extra=("--retries", "0"))
    try:
        migration.wait_for("gate", f"committed {2 * BATCH}")
        blocker = psycopg.connect(url)
        blocker.execute("lock table public.embeddings in share row exclusive mode")
        migration.open_gate()
        backend = wait_for_lock_wait(url, "bulk_upsert")
        # The batch's documents are inserted, its embeddings wait: now the database dies.
        assert rows(url, "select count(*) from public.documents") == [(2 * BATCH,)]  # others cannot see them
        postmaster = own_stack.status().pid
        assert postmaster is not None
        backends = [
            int(r[0])
            for r in rows(url, "select pid from pg_stat_activity where backend_type = 'client backend'")
        ]
        os.kill(postmaster, signal.SIGKILL)
        for pid in [postmaster, backend, *backends]:
            wait_for_exit(pid)
        code, _, err = migration.finish()
        blocker.close()
    finally:
        migration.cleanup()
    assert code == 1
    run_id = run_id_in(state)
    assert f"continue with: supa-vectors migrate --resume {run_id}" in err

    assert own_stack.start() == url
    assert rows(url, "select count(*) from public.documents") == [(2 * BATCH,)]
    assert rows(url, "select count(*) from public.embeddings") == [(2 * BATCH,)]
    assert rows(
        url,
        "select count(*) from public.documents d"
        " where not exists (select 1 from public.embeddings e where e.document_id = d.id)",
    ) == [(0,)]

    code, out, err = resume(url, source, state, run_id)
    assert code == 0, err
    assert "verify passed" in out
    assert_exactly_once(url, run_id)
