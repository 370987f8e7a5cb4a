"""A runner's terminal service as its own process, so a test can kill it mid-session (``kill -9``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from ec2_runner.ws_client import serve_terminals
from tests.integration.refine_support import RUNNER_SECRET, session_manager


async def main(ws_url: str, workdir: str) -> None:
    sessions = session_manager(Path(workdir))
    await serve_terminals(ws_url, RUNNER_SECRET, sessions, "runner-proc")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
