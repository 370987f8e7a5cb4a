"""Refine terminal sessions on the runner: one session per task or branch, whatever arrives at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fixtures import wait_until
from tests.integration.refine_support import (
    KIRO_PROMPT,
    Browser,
    FakeKiro,
    browser_token,
    process_running,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]


def test_concurrent_opens_of_one_task_share_one_session(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """Two browsers opening the same task at the same moment meet in one session: one worktree, one
    agent process, the same output on both; stopping the runner leaves no agent behind."""
    kiro = FakeKiro(tmp_path)
    with running_gateway(moto_endpoint, table) as gw:
        # the task lookup takes as long as a table read: both opens are in flight together
        runner = running_runner(
            gw, lambda: session_manager(tmp_path, kiro.argv_for, kiro.env, resolve_delay=0.3)
        )
        runner.__enter__()
        try:

            async def scenario() -> None:
                a = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
                b = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
                # when
                opened_a, opened_b = await asyncio.gather(
                    a.open(taskId="T-1", timeout=10), b.open(taskId="T-1", timeout=10)
                )
                # then
                assert opened_a.sessionId == opened_b.sessionId
                await a.wait_text(KIRO_PROMPT, 10)
                await b.wait_text(KIRO_PROMPT, 10)
                await a.type("typed in a\r")
                await a.wait_text("you said: typed in a")
                await b.wait_text("you said: typed in a")
                await b.type("typed in b\r")
                await a.wait_text("you said: typed in b")
                await b.wait_text("you said: typed in b")
                await a.close()
                await b.close()

            asyncio.run(scenario())
            assert len(kiro.events("start")) == 1, kiro.events("start")
            assert len(list((tmp_path / "worktrees").iterdir())) == 1
        finally:
            runner.__exit__(None, None, None)
    pids = [e["pid"] for e in kiro.events("start")]
    wait_until(lambda: not any(process_running(p) for p in pids), 10, what="the agents to end")
