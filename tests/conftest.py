"""Fixtures shared by every tier. The moto server runs over real HTTP on loopback."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
FAKE_AGENT = ROOT / "tests" / "fake_agent"

# never reach real AWS: dummy credentials and a fixed region for every test
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    SAM_CLI_TELEMETRY="0",
)
os.environ.pop("AWS_PROFILE", None)
# the fake Kiro CLI keeps its conversations outside the worktrees, as the real one does: not in ~
os.environ.setdefault("FAKE_KIRO_HOME", tempfile.mkdtemp(prefix="fake-kiro-home-"))
# the fake Kiro CLI logs outside its worktree, and the reaping tests look its processes up by the pids
# it logs (a sandbox's pid namespace renumbers them): the suite runs agents unsandboxed unless a test
# asks for the sandbox, as tests/integration/test_sandbox.py and tests/e2e/test_sandboxed_runner.py do
os.environ.setdefault("AGENT_SANDBOX", "off")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session; tests isolate themselves by resource names."""
    from local.motoserver import MotoServer

    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session", autouse=True)
def _lambda_logs_follow_stdout() -> None:
    """The in-process Lambdas' shared Logger keeps the stream it was made with, as in Lambda; in a
    test process that may be one test's captured stdout, closed when that test ends. It follows
    whatever ``sys.stdout`` is instead, so every test's capture sees the Lambdas' lines."""
    from tests.fixtures import _CurrentStdout

    try:
        from shared.observability import logger
    except Exception:  # e.g. a unit-tier process where sockets are off: no Lambda runs there
        return
    handler = logger.registered_handler
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(_CurrentStdout())
