"""The command line through an outage, against a real local stack that the tests stop and start.

The module runs its own stack (like tests/test_offline.py: one test stops it) and points the CLI's
default configuration at it through ``SUPA_VECTORS_LOCAL_DIR``, with a cache directory of its own.
Outages are real: ``local stop`` (connections refused), or a listening socket on the stopped server's
port that never answers (a host that does not respond). Commands run through ``cli.main(argv)`` and,
where stderr must be exactly what a user sees, as real subprocesses. Nothing asserts wall-clock time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supa_vectors import BackendUnavailableError, CircuitBreaker, VectorStore
from supa_vectors.cli import main
from supa_vectors.local import LocalStack
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import REPO_ROOT, empty_store

DOCS = [
    {"id": "espresso", "content": "Espresso forces hot water through finely ground coffee under pressure."},
    {"id": "cold-brew", "content": "Cold brew steeps coarse coffee in cold water for twelve hours or more."},
    {"id": "grinder", "content": "A burr grinder crushes beans to an even size; blade grinders chop them."},
]
ASKED = "how do I make iced coffee"
NEW = "which grinder gives an even grind"


@pytest.fixture(scope="module")
def cli_env() -> Iterator[dict[str, str]]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is mode 700, which the server's OS user cannot traverse.
    root = Path(tempfile.mkdtemp(prefix="supa-vectors-cli-outage-"))
    root.chmod(0o755)
    stack = LocalStack(base_dir=root / "stack")
    try:
        stack.start()
        yield {
            "SUPA_VECTORS_LOCAL_DIR": str(root / "stack"),
            "SUPA_VECTORS_CACHE_DIR": str(root / "cache"),
            "root": str(root),
        }
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def env(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The default configuration (no URL in the environment), a fresh cache, a running empty stack."""
    for name in ("SUPA_VECTORS_DATABASE_URL", "SUPABASE_URL", "SUPABASE_KEY", "SUPA_VECTORS_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SUPA_VECTORS_MIRROR_SYNC", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SUPA_VECTORS_LOCAL_DIR", cli_env["SUPA_VECTORS_LOCAL_DIR"])
    monkeypatch.setenv("SUPA_VECTORS_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    url = LocalStack().start()
    empty_store(url)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "docs.json").write_text(json.dumps(DOCS))
    return {"url": url, "docs": str(folder), "cache": str(cache), "state": str(tmp_path / "state")}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def hit_ids(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()]


def migrate_docs(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> list[str]:
    code, _, err = cli(capsys, "migrate", env["docs"], "--state-dir", env["state"], "--no-backup")
    assert code == 0, err
    return err


class SilentServer:
    """Accepts TCP connections on a port and never says a word: a database host that does not answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        # shutdown() wakes the accept() above; then nothing listens on the port any more.
        for conn in self.accepted:
            conn.close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------


def test_default_setup_answers_from_cache_and_mirror_after_local_stop(
    capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> None:
    err = migrate_docs(capsys, env)
    assert any(line.startswith("mirror: 3 documents") for line in err), err  # migrate synced the mirror
    code, online, err = cli(capsys, "search", ASKED, "-k", "2")
    assert code == 0
    assert not any("offline" in line for line in err)
    assert cli(capsys, "local", "stop")[0] == 0
    try:
        # Asked before: the results cache; the stopped stack's last URL is refused, not "not configured".
        code, out, err = cli(capsys, "search", ASKED, "-k", "2")
        assert code == 0, err
        assert hit_ids(out) == hit_ids(online)
        assert len(err) == 1, err
        assert "offline" in err[0], err
        assert "results cache" in err[0], err
        # Never asked: the mirror that migrate synced.
        code, out, err = cli(capsys, "search", NEW, "-k", "1")
        assert code == 0, err
        assert hit_ids(out) == ["grinder"]
        assert len(err) == 1, err
        assert "offline mirror" in err[0], err
    finally:
        assert cli(capsys, "local", "start")[0] == 0


def test_a_real_process_prints_one_line_and_no_pool_noise(
    capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> None:
    migrate_docs(capsys, env)
    assert cli(capsys, "search", ASKED, "-k", "2")[0] == 0
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SUPA_VECTORS_DATABASE_URL": env["url"],  # exported, as the README's walk-through does
    }
    stack = LocalStack()
    stack.stop()
    try:
        for query, source in ((ASKED, "results cache"), (NEW, "offline mirror")):
            done = subprocess.run(
                [sys.executable, "-m", "supa_vectors.cli", "search", query, "-k", "2"],
                env=environ,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            lines = done.stderr.splitlines()
            assert len(lines) == 1, done.stderr
            assert source in lines[0], done.stderr
            assert "error connecting" not in done.stderr
            assert hit_ids(done.stdout)
    finally:
        stack.start()


def test_the_breaker_remembers_a_silent_host_until_the_stack_starts_again(
    capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> None:
    migrate_docs(capsys, env)
    assert cli(capsys, "search", ASKED, "-k", "2")[0] == 0
    port = int(env["url"].split(":")[2].split("/")[0])
    assert cli(capsys, "local", "stop")[0] == 0
    silent = SilentServer(port)
    try:
        # The host accepts and never answers: the search gives up after --timeout and answers offline.
        code, _, err = cli(capsys, "search", ASKED, "-k", "2", "--timeout", "2")
        assert code == 0, err
        assert len(err) == 1, err
        assert "results cache" in err[0], err
        tried = len(silent.accepted)
        assert tried >= 1
        files = list((Path(env["cache"]) / "breaker").glob("*.json"))
        assert len(files) == 1
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        assert json.loads(files[0].read_text())["opened_at"] is not None
        # The next command (a new store, as a new process would build) does not try the host again.
        code, _, err = cli(capsys, "search", ASKED, "-k", "2", "--timeout", "2")
        assert code == 0, err
        assert len(err) == 1, err
        assert "results cache" in err[0], err
        assert len(silent.accepted) == tried
        # `mirror sync` asks anyway (there is nothing to answer offline) and says why it failed.
        code, _, err = cli(capsys, "mirror", "sync", "--timeout", "2")
        assert code == 1, err
        assert len(err) == 1, err
        assert "unreachable" in err[0], err
        assert len(silent.accepted) > tried
    finally:
        silent.close()
    # Started again: the remembered outage is forgotten, the next search is answered online.
    assert cli(capsys, "local", "start")[0] == 0
    assert not (Path(env["cache"]) / "breaker").exists()
    code, _, err = cli(capsys, "search", ASKED, "-k", "2")
    assert code == 0, err
    assert err == [], err


def offline_ids(capsys: pytest.CaptureFixture[str], query: str) -> list[str]:
    """The ids an outage answers ``query`` with (from the mirror), the stack stopped for the question."""
    assert cli(capsys, "local", "stop")[0] == 0
    try:
        code, out, err = cli(capsys, "search", query, "-k", "4")
        assert code == 0, err
        assert len(err) == 1, err
        assert "offline mirror" in err[0], err
        return hit_ids(out)
    finally:
        assert cli(capsys, "local", "start")[0] == 0


def test_searches_keep_the_mirror_current_unless_told_not_to(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate_docs(capsys, env)
    late = {"id": "moka", "content": "A moka pot pushes steam-pressured water up through the coffee."}
    with VectorStore.from_url(env["url"], cache="off") as store:
        store.upsert(late)  # written by an app, after migrate synced the mirror

    # Turned off (flag, or the environment): online searches leave the mirror as it was.
    assert cli(capsys, "search", ASKED, "-k", "1", "--no-sync")[0] == 0
    monkeypatch.setenv("SUPA_VECTORS_MIRROR_SYNC", "off")
    assert cli(capsys, "search", ASKED, "-k", "1")[0] == 0
    assert "moka" not in offline_ids(capsys, "moka pot steam pressure")
    # On demand.
    code, out, _ = cli(capsys, "mirror", "sync")
    assert code == 0, out
    assert out.startswith("mirror: 4 documents"), out
    assert offline_ids(capsys, "moka pot steam pressure")[0] == "moka"

    with VectorStore.from_url(env["url"], cache="off") as store:
        store.delete("moka")
    # On (0 s: refresh whenever older than that): an ordinary online search brings the mirror up to date.
    monkeypatch.setenv("SUPA_VECTORS_MIRROR_SYNC", "0")
    assert cli(capsys, "search", ASKED, "-k", "1")[0] == 0
    assert sorted(offline_ids(capsys, "moka pot steam pressure")) == ["cold-brew", "espresso", "grinder"]


def test_a_query_with_nothing_to_fall_back_on_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> None:
    assert cli(capsys, "local", "stop")[0] == 0
    try:
        code, out, err = cli(capsys, "search", ASKED)
        assert code == 1
        assert out == ""
        assert len(err) == 1
        assert err[0].startswith("supa-vectors: error:")
        assert "unreachable" in err[0]
    finally:
        assert cli(capsys, "local", "start")[0] == 0


def test_a_refused_connection_is_reported_by_the_first_attempt(env: dict[str, str]) -> None:
    """Not after the pool's timeout: the error comes from the transport's own connection attempt."""
    stack = LocalStack()
    stack.stop()
    try:
        with (
            PostgresTransport(env["url"], timeout=600) as transport,
            pytest.raises(BackendUnavailableError, match=r"unreachable.*refused"),
        ):
            transport.rpc("store_settings", {})
    finally:
        stack.start()


def test_a_breaker_state_file_carries_over_to_the_next_breaker(tmp_path: Path) -> None:
    path = tmp_path / "breaker" / "state.json"
    first = CircuitBreaker(failure_threshold=2, reset_timeout=60, state_file=path)
    first.record_failure()
    assert CircuitBreaker(failure_threshold=2, reset_timeout=60, state_file=path).failures == 1
    first.record_failure()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = CircuitBreaker(failure_threshold=2, reset_timeout=60, state_file=path)
    assert second.state == "open"
    assert not second.allow()
    # A breaker that trusts a remembered outage for 0 s probes at once; its success closes them all.
    third = CircuitBreaker(failure_threshold=2, reset_timeout=0, state_file=path)
    assert third.allow()
    third.record_success()
    assert CircuitBreaker(state_file=path).state == "closed"
    path.write_text("not json")
    assert CircuitBreaker(state_file=path).state == "closed"
