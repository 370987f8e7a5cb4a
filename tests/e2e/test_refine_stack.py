"""Refine with Kiro on the local stack, as a user runs it: the task's pipeline run, then a browser
(token from `aipm token`) refining the same branch live through the gateway stand-in, and a push."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import git
import pytest

from shared import frames as fr
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO, AwsCli, aipm_in, unique
from tests.integration.refine_support import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def refine_stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from local.stack import LocalStack

    stack = LocalStack(
        tmp_path_factory.mktemp("refine"),
        runners=1,
        stack_name=unique("rf"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        stream_poll_seconds=0.2,
        gateway_port=0,
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_INTERACTIVE_COMMAND": f"{FAKE_KIRO} chat --wrap never",
            "SQS_WAIT_SECONDS": "1",
            "TERMINAL_GIT_STATUS": "true",
        },
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def aipm(stack: Any, *args: str) -> str:
    return aipm_in(stack.workdir, *args)


def test_refine_a_finished_task_live_and_push_the_result(refine_stack: Any) -> None:
    cfg = refine_stack.config
    assert cfg.ws_url and cfg.page_url
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id, branch = unique("refine"), f"feature/{unique('refine')}"
    cli.put_task(task_id, branch)
    row = cli.wait_final(task_id, 60)
    assert row["status"] == "complete", row.get("error")

    token = aipm(refine_stack, "token", "--task", task_id, "--ttl", "120")

    async def refine() -> str:
        browser = await Browser.connect(cfg.ws_url, token)
        try:
            await browser.open(task_id=task_id, timeout=20)
            await browser.wait_text("interactive chat", timeout=20)
            # the session opened where the task's agent ran: the agent resumes that very conversation
            await browser.wait_text("Resumed the previous conversation", timeout=20)
            await browser.type('[fake:write path=refined.txt text="refined live"]\r')
            await browser.wait_text("[y/n/t]", timeout=20)  # the interactive agent asks, the user allows
            await browser.type("y\r")
            await browser.wait_text("you said:", timeout=20)
            await browser.send(fr.PushFrame(session_id=browser.session_id, message="Refine: add refined.txt"))
            pushed = await browser.wait_frame(fr.PushedFrame, timeout=20)
            await browser.send(fr.CloseFrame(session_id=browser.session_id))
            return pushed.commit_sha
        finally:
            await browser.close()

    sha = asyncio.run(refine())
    remote = git.Repo(cfg.git_remote)
    assert remote.git.rev_parse(f"refs/heads/{branch}") == sha
    assert remote.git.show(f"{sha}:refined.txt").strip() == "refined live"
    assert remote.git.log("-1", "--format=%P", sha).strip() == row["commitSha"]  # on top of the task's commit


def test_a_token_for_another_task_cannot_open_this_one(refine_stack: Any) -> None:
    cfg = refine_stack.config
    token = aipm(refine_stack, "token", "--task", "someone-elses-task")

    async def attempt() -> list[str | None]:
        browser = await Browser.connect(cfg.ws_url, token)
        try:
            await browser.send(fr.OpenFrame(task_id="not-granted-task"))
            await browser.wait_frame(fr.ErrorFrame, timeout=10)
            return [f.code for f in browser.frames if isinstance(f, fr.ErrorFrame)]
        finally:
            await browser.close()

    assert "not_granted" in asyncio.run(attempt())
