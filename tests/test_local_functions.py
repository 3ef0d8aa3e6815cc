"""`supa-vectors local start` serves supabase/functions under Deno beside the database (no Docker),
`local status` prints their URL and keys signed with the stack's own secret, `local stop` stops them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from supa_vectors.cli import main
from supa_vectors.local.functions import LocalFunctions


@pytest.fixture
def functions(tmp_path: Path) -> Iterator[LocalFunctions]:
    served = LocalFunctions(tmp_path / "stack")
    yield served
    served.stop()


def test_served_functions_answer_with_the_stacks_keys(functions: LocalFunctions, clean_url: str) -> None:
    url = functions.start(clean_url)
    assert functions.start(clean_url) == url  # already running: the same process
    service = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {functions.key('service_role')}"})
    assert service.status_code == 200
    assert service.json()["role"] == "service_role"
    anon = httpx.get(f"{url}/stats", headers={"Authorization": f"Bearer {functions.key('anon')}"})
    assert anon.status_code == 403
    forged = jwt.encode({"role": "service_role", "exp": 2**31}, "x" * 48, algorithm="HS256")
    assert httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    secret = functions.base_dir / "jwt_secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_status_prints_the_url_and_keys_and_stop_stops_them(
    functions: LocalFunctions, clean_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = functions.start(clean_url)
    assert main(["local", "status", "--data-dir", str(functions.base_dir)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["functions"].strip() == url
    claims = jwt.decode(lines["anon key"].strip(), functions.jwt_secret(), algorithms=["HS256"])
    assert claims["role"] == "anon"
    assert main(["local", "stop", "--data-dir", str(functions.base_dir)]) == 0
    assert not functions.status().running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_functions_killed_are_seen_as_stopped_and_start_again(
    functions: LocalFunctions, clean_url: str
) -> None:
    functions.start(clean_url)
    pid = functions.status().pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # our child here; reaped, its pid is free
    assert not functions.status().running
    url = functions.start(clean_url)
    key = functions.key("service_role")
    assert httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {key}"}).status_code == 200
