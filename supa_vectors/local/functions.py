"""The Edge Functions beside the local stack: ``supabase/functions/*`` under Deno, no Docker.

``supabase functions serve`` runs the functions in the Supabase edge runtime's Docker image, which
users of the embedded stack may not have. The functions are plain Deno programs (``index.ts`` serves
itself when it is not inside the edge runtime), so the local stack runs them with Deno from PyPI's
``deno`` package, against its own database and with a JWT secret of its own: ``local status`` prints
the functions' URL and an anon and a service-role key signed with that secret, as ``supabase status``
does for the Docker stack. The state (process id, port) sits in ``functions.json`` in the stack's
directory, so any process that names the directory can stop them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from supa_vectors.errors import LocalStackError
from supa_vectors.local.migrations import shipped_supabase_dir

__all__ = ["FunctionsStatus", "LocalFunctions", "find_functions_dir"]

_STATE_FILE = "functions.json"
_SECRET_FILE = "jwt_secret"  # noqa: S105 (a file name; the secret is made at first use)
_LOG_FILE = "functions.log"
# Deno fetches the functions' npm packages on the first start (deno.lock pins them), then loads in
# a fraction of a second; a start that is not listening after this long is reported as failed.
_READY_TIMEOUT = 60.0
_KEY_LIFETIME = 10 * 365 * 24 * 3600  # like the Docker stack's demo keys: for development only


@dataclass(frozen=True)
class FunctionsStatus:
    """Where the functions stand: their base URL (``…/<function>``) while they run."""

    running: bool
    url: str | None
    pid: int | None
    log_file: Path


@dataclass(frozen=True)
class _Served:
    pid: int
    url: str


def find_functions_dir() -> Path | None:
    """``supabase/functions`` of a checkout, or the copy an installed wheel carries; None if neither."""
    return shipped_supabase_dir("functions")


def find_deno() -> str | None:
    """Deno from PyPI's ``deno`` (next to this interpreter), else on PATH."""
    beside = Path(sys.executable).with_name("deno")
    return str(beside) if beside.is_file() else shutil.which("deno")


class LocalFunctions:
    """The ``vectors`` function of ``supabase/functions`` served for the stack in ``base_dir``."""

    name = "vectors"

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.log_file = base_dir / _LOG_FILE
        self._state_file = base_dir / _STATE_FILE
        self._secret_file = base_dir / _SECRET_FILE

    # ---- keys ------------------------------------------------------------------------------------

    def jwt_secret(self) -> str:
        """The stack's HS256 secret, made once (0600): the functions verify tokens with it."""
        with contextlib.suppress(FileNotFoundError):
            secret = self._secret_file.read_text().strip()
            if len(secret) >= 32:
                return secret
        self.base_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        fd = os.open(self._secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret)
        return secret

    def key(self, role: str) -> str:
        """A token for ``role`` (``anon`` or ``service_role``) signed with the stack's secret."""
        import jwt

        now = int(time.time())
        claims = {"iss": "supa-vectors-local", "role": role, "iat": now, "exp": now + _KEY_LIFETIME}
        return jwt.encode(claims, self.jwt_secret(), algorithm="HS256")

    # ---- the process -----------------------------------------------------------------------------

    def status(self) -> FunctionsStatus:
        served = self._served()
        if served is None:
            return FunctionsStatus(False, None, None, self.log_file)
        return FunctionsStatus(True, served.url, served.pid, self.log_file)

    def start(self, database_url: str, *, env: Mapping[str, str] | None = None) -> str:
        """Serve the functions against ``database_url``; returns their base URL. A no-op (the same
        URL) when they already run. ``env`` adds to (or overrides) the functions' environment: other
        keys (``JWT_JWKS``), an edge model (``EMBEDDING_MODEL_URL``). Raises ``LocalStackError`` when
        Deno or the functions are missing, or when Deno does not listen (its log says why)."""
        running = self._served()
        if running is not None:
            return running.url
        deno = find_deno()
        functions = find_functions_dir()
        if deno is None:
            raise LocalStackError("Deno is not installed (pip install 'supa-vectors[local]' brings it)")
        if functions is None or not (functions / self.name / "index.ts").is_file():
            raise LocalStackError("no supabase/functions to serve in this installation")
        port = _free_port()
        environment = {
            **os.environ,
            "SUPABASE_DB_URL": database_url,
            "JWT_SECRET": self.jwt_secret(),
            "NO_COLOR": "1",
            **(env or {}),
            "PORT": str(port),
            "HOST": "127.0.0.1",
        }
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [deno, "run", "--frozen", "--allow-net", "--allow-env", "--allow-read", "index.ts"],
                cwd=functions / self.name,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `supa-vectors local start`, like the database
            )
        url = f"http://127.0.0.1:{port}/{self.name}"
        if not _wait_listening(process, port):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise LocalStackError(f"the functions did not start ({' / '.join(tail) or 'no output'})")
        self._state_file.write_text(json.dumps({"pid": process.pid, "port": port, "url": url}))
        return url

    def stop(self) -> None:
        """Stop the functions (a no-op when they do not run)."""
        served = self._served()
        if served is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(served.pid, signal.SIGTERM)  # Deno and anything it spawned
            _wait_gone(served.pid)
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()

    def _served(self) -> _Served | None:
        """The recorded process if it is still our Deno (a reused pid is not)."""
        try:
            state = json.loads(self._state_file.read_text())
            pid, url = int(state["pid"]), str(state["url"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not command or not Path(os.fsdecode(command[0])).name.startswith("deno"):
            return None
        return _Served(pid, url)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether Deno accepts connections on ``port`` before it exits or the timeout passes."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
