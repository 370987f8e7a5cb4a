"""Fixtures shared by every tier. The moto server runs over real HTTP on loopback."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session; tests isolate themselves by resource names."""
    from local.motoserver import MotoServer

    with MotoServer() as server:
        yield server.endpoint_url
