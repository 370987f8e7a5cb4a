"""The real agent CLIs the tests drive (installed by ``make node-deps`` from this folder's lock file),
and how a test runs them with no network but the scripted model server."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE / "node_modules" / ".bin"
CLAUDE = BIN / "claude"
CODEX = BIN / "codex"
EGRESS = HERE.parents[1] / "ec2_runner" / "egress.py"
INNER_PORT = 18080  # where the model server appears inside the CLI's network namespace


def missing() -> str | None:
    """Why the real CLIs cannot run here, or None."""
    if not (CLAUDE.exists() and CODEX.exists()):
        return "the real agent CLIs are not installed: run `make node-deps` (tests/agent_clis)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed: the CLIs must run in a network namespace"
    import subprocess

    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net is not permitted here ({probe.stderr.strip()}): run the tests as root"
    return None


def offline(cli: Path, model_socket: Path) -> str:
    """``AGENT_COMMAND`` for ``cli`` in a network namespace of its own (loopback only), where the
    runner's egress bridge forwards ``127.0.0.1:INNER_PORT`` to the model server's unix socket: the
    CLI can reach the scripted model and nothing else."""
    return (
        f"unshare --net -- {sys.executable} -I -S -B {EGRESS} bridge --port {INNER_PORT} "
        f"--unix {model_socket} -- {cli}"
    )
