"""The README's "When Supabase is down" walk-through runs as written and prints what it says it prints.

It really stops and starts a local stack of its own, in separate processes, with the real ONNX model.
The /tmp paths of the walk-through are swapped for this run's own, so parallel runs cannot collide.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import REPO_ROOT

HEADING = "## When Supabase is down"


def section() -> str:
    readme = (REPO_ROOT / "README.md").read_text("utf-8")
    assert HEADING in readme
    return readme.split(HEADING, 1)[1].split("\n## ", 1)[0]


def test_the_offline_walk_through_runs_as_written() -> None:
    text = section()
    script = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    printed = re.search(r"It prints.*?```\n(.*?)```", text, re.DOTALL)
    assert script
    assert printed
    root = Path(tempfile.mkdtemp(prefix="supa-vectors-readme-offline-"))
    root.chmod(0o755)  # the unprivileged Postgres user must traverse it
    body = script.group(1).replace("/tmp/supa-vectors-offline-demo", str(root / "demo"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SUPA_VECTORS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + body],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        assert result.stdout == printed.group(1), result.stdout
    finally:
        subprocess.run(
            ["supa-vectors", "local", "stop", "--data-dir", str(root / "demo")],
            env=env,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
