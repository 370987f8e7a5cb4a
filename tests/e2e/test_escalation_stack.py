"""A blocked run handed to a person, on the local stack as a user meets it (``APPROVAL=escalate``): a
real runner process on the fake ``kiro-cli``, the WebSocket gateway stand-in, browsers holding
tokens from ``aipm token``. The run stops at Kiro's approval question with its pty alive, the row
says what it waits for, a browser on the task sees the question; a read-write one answers it and
the run goes on to its push; a read-only one is refused; nobody answering fails it
``approval_required`` at ``APPROVAL_TIMEOUT`` with its work on the WIP ref. The same with the real
Claude Code, whose question is its ``--permission-prompt-tool``'s."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from shared import frames as fr
from tests import agent_clis
from tests.e2e.test_live_progress import Follow
from tests.fixtures import FAKE_AGENT_COMMAND, AwsCli, aipm_in, unique, wait_until
from tests.integration.refine_support import Browser
from tests.model_server import CLEAN_CONTENT, CLEAN_FILE, ModelServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

APPROVAL_TIMEOUT = 15  # room for `aipm logs --follow` to connect on a loaded machine before it passes


class FollowAll(Follow):
    """`aipm logs --follow`, its stderr read line by line too (what it says beside the output)."""

    def __init__(self, stack: Any, task_id: str) -> None:
        super().__init__(stack, task_id)
        self.said: list[str] = []
        self._said_reader = threading.Thread(target=self._read_said, daemon=True)
        self._said_reader.start()

    def _read_said(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.said.append(line)

    def wait_said(self, needle: str, timeout: float = 60) -> str:
        return wait_until(
            lambda: next((line for line in self.said if needle in line), None),
            timeout,
            what=f"`aipm logs --follow` to say {needle!r}",
        )


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("escalate")
    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique("esc"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        stream_poll_seconds=0.2,
        gateway_port=0,
        log_dir=work / "logs",
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_KILL_GRACE": "1",
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "2",
            "LOG_TAIL_SECONDS": "0.5",
            "APPROVAL": "escalate",
            "APPROVAL_TIMEOUT": str(APPROVAL_TIMEOUT),
        },
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def waiting_row(cli: AwsCli, task_id: str) -> dict:
    return wait_until(
        lambda: (row := cli.read(task_id)).get("waitingFor") and row,
        60,
        interval=0.2,
        what=f"{task_id}'s row to say what it waits for",
    )


async def open_running(url: str, token: str, task_id: str, cli: AwsCli) -> Browser:
    """A browser on the task once it runs. It opens once the row says ``processing``: a read-write
    ``open`` of a task that runs nowhere yet starts a Refine terminal of it (and the run that claims
    it then is not streamed there), a read-only one is answered ``no_session``."""
    await asyncio.to_thread(
        wait_until,
        lambda: cli.read(task_id).get("status") == "processing",
        60,
        interval=0.2,
        what=f"{task_id} to be claimed",
    )
    for _ in range(60):
        browser = await Browser.connect(url, token)
        try:
            return await browser_opened(browser, task_id)
        except TimeoutError:
            await browser.close()
            await asyncio.sleep(0.5)
    raise AssertionError(f"{task_id} never became watchable")


async def browser_opened(browser: Browser, task_id: str) -> Browser:
    await browser.send(fr.OpenFrame(task_id=task_id))
    await browser.wait_for(
        lambda b: any(isinstance(f, fr.OpenedFrame | fr.ErrorFrame) for f in b.frames), timeout=10
    )
    if not any(isinstance(f, fr.OpenedFrame) for f in browser.frames):
        raise TimeoutError("not running yet")
    opened = next(f for f in browser.frames if isinstance(f, fr.OpenedFrame))
    browser.session_id = opened.session_id
    return browser


def test_a_read_write_browser_answers_the_question_and_the_run_goes_on_to_its_push(stack: Any) -> None:
    cfg = stack.config
    assert cfg.ws_url
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("answered")
    branch = f"feature/{task_id}"
    details = '[fake:approval tool=fs_write] [fake:write path=escalated.txt text="written once allowed"]'
    cli.put_task(task_id, branch, details=details)
    token = aipm_in(stack.workdir, "token", "--task", task_id, "--ttl", "300")
    follow = FollowAll(stack, task_id)  # `aipm logs --follow`, as an operator watches

    async def scenario() -> tuple[fr.QuestionFrame, dict, fr.TaskFrame, list[fr.QuestionFrame], str]:
        browser = await open_running(cfg.ws_url, token, task_id, cli)
        try:
            asked = await browser.wait_frame(fr.QuestionFrame, timeout=60, pending=True)
            row = await asyncio.to_thread(waiting_row, cli, task_id)
            said = await asyncio.to_thread(follow.wait_said, "the run waits for a person's answer")
            assert "(y/n/t, from a read-write token for the task" in said and "[y/n/t]:" in said, said
            await browser.type("y\r")
            ended = await browser.wait_frame(fr.TaskFrame, timeout=60)
            questions = [f for f in browser.frames if isinstance(f, fr.QuestionFrame)]
            return asked, row, ended, questions, browser.text
        finally:
            await browser.close()

    asked, row_while_asking, ended, questions, text = asyncio.run(scenario())
    # then: the question reached the browser as Kiro asked it, and the row said what the run waited for
    assert "Using tool: fs_write" in (asked.question or "") and asked.choices == ["y", "n", "t"]
    assert asked.timeout_seconds == APPROVAL_TIMEOUT and "[y/n/t]:" in text
    assert row_while_asking["status"] == "processing"
    assert "a person's answer (y/n/t" in row_while_asking["waitingFor"]
    assert "Allow this action?" in row_while_asking["waitingFor"]
    # and the answer let the run finish: complete, pushed, the question over, the row's note gone
    # (a browser that re-attaches, as after the runner's socket reconnected, is told the question again)
    *asking, over = [(q.pending, q.answer) for q in questions]
    assert asking and set(asking) == {(True, None)} and over == (False, "y")
    assert "[runner] a person answered 'y'" in text
    assert ended.status == "complete"
    row = cli.read(task_id)
    assert row["status"] == "complete" and "waitingFor" not in row
    remote = git.Repo(cfg.git_remote)
    assert remote.git.show(f"{branch}:escalated.txt") == "written once allowed"
    # and `aipm logs --follow` followed the run through its question to its end (exit 0: complete)
    code, _ = follow.finish()
    assert code == 0


def test_a_read_only_answer_is_refused_and_an_unanswered_run_fails_with_its_work_kept(stack: Any) -> None:
    cfg = stack.config
    assert cfg.ws_url
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("unanswered")
    branch = f"feature/{task_id}"
    cli.put_task(task_id, branch, details="[fake:checkpoint=0.1] [fake:approval tool=fs_write]")
    token = aipm_in(stack.workdir, "token", "--task", task_id, "--read-only", "--ttl", "300")

    async def scenario() -> tuple[fr.QuestionFrame, fr.ErrorFrame, dict, fr.TaskFrame]:
        browser = await open_running(cfg.ws_url, token, task_id, cli)
        try:
            asked = await browser.wait_frame(fr.QuestionFrame, timeout=60, pending=True)
            await browser.type("y\r")
            refused = await browser.wait_frame(fr.ErrorFrame, timeout=10, code="read_only")
            row = await asyncio.to_thread(cli.read, task_id)
            ended = await browser.wait_frame(fr.TaskFrame, timeout=60)
            return asked, refused, row, ended
        finally:
            await browser.close()

    asked, refused, row_after_refusal, ended = asyncio.run(scenario())
    # then: the read-only browser saw the question, its answer was refused, the run kept waiting
    assert asked.pending and "[y/n/t]:" in (asked.question or "")
    assert "read-only" in refused.message
    assert row_after_refusal["status"] == "processing" and row_after_refusal.get("waitingFor")
    # and nobody answering failed it approval_required, its work kept on the WIP ref, nothing pushed
    assert (ended.status, ended.error_kind) == ("failed", "approval_required")
    row = cli.read(task_id)
    assert (row["status"], row["errorKind"]) == ("failed", "approval_required")
    assert f"nobody answered within {APPROVAL_TIMEOUT} s" in row["error"]
    assert row["wipRef"] == f"kiro-wip/{task_id}" and "waitingFor" not in row
    remote = git.Repo(cfg.git_remote)
    assert "checkpoint.txt" in remote.git.ls_tree("--name-only", row["wipSha"]).split()
    assert remote.git.ls_remote("--heads", cfg.git_remote, branch) == ""  # nothing on the task's branch


@pytest.fixture(scope="module")
def claude_stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A runner driving the real Claude Code offline (``unshare --net``, the scripted model), with
    APPROVAL=escalate."""
    if agent_clis.missing() is not None:
        pytest.skip(agent_clis.missing() or "")
    from local.stack import LocalStack
    from tests.e2e.test_real_agent_clis import cli_env

    work = tmp_path_factory.mktemp("escalate-claude")
    (work / "cli-home").mkdir()
    sock = Path(tempfile.mkdtemp(prefix="model-")) / "model.sock"
    with ModelServer(unix_socket=sock):
        stack = LocalStack(
            work,
            runners=1,
            stack_name=unique("esc-claude"),
            endpoint_url=moto_endpoint,
            reconcile_seconds=3600,
            stream_poll_seconds=0.2,
            gateway_port=0,
            log_dir=work / "logs",
            runner_env={
                **cli_env("claude", f"http://127.0.0.1:{agent_clis.INNER_PORT}", work / "cli-home"),
                "AGENT_COMMAND": agent_clis.offline(agent_clis.CLAUDE, sock),
                "AGENT_SANDBOX": "off",
                "AGENT_TIMEOUT": "60",
                "AGENT_KILL_GRACE": "1",
                "AGENT_API_RETRIES": "0",
                "SQS_WAIT_SECONDS": "1",
                "APPROVAL": "escalate",
                "APPROVAL_TIMEOUT": "60",
            },
        )
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()
    shutil.rmtree(sock.parent, ignore_errors=True)


def test_claude_code_asks_a_browser_on_the_task_and_the_answered_run_pushes(claude_stack: Any) -> None:
    """The real Claude Code under a runner: the web fetch its permission mode would deny is asked
    about (its --permission-prompt-tool, on the run's pty), a read-write browser on the task answers
    ``y``, and the task completes with the model's file pushed."""
    cfg = claude_stack.config
    assert cfg.ws_url
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("claude-asks")
    branch = f"feature/{task_id}"
    cli.put_task(task_id, branch, details="fetch the page [script:needs_approval]")
    token = aipm_in(claude_stack.workdir, "token", "--task", task_id, "--ttl", "300")

    async def scenario() -> tuple[fr.QuestionFrame, dict, fr.TaskFrame]:
        browser = await open_running(cfg.ws_url, token, task_id, cli)
        try:
            asked = await browser.wait_frame(fr.QuestionFrame, timeout=90, pending=True)
            row = await asyncio.to_thread(waiting_row, cli, task_id)
            await browser.type("y\r")
            ended = await browser.wait_frame(fr.TaskFrame, timeout=90)
            return asked, row, ended
        finally:
            await browser.close()

    asked, row_while_asking, ended = asyncio.run(scenario())
    assert asked.question == "Using tool: WebFetch (http://127.0.0.1:9/approve-me)\nAllow this action? [y/n]:"
    assert asked.choices == ["y", "n"] and "WebFetch" in row_while_asking["waitingFor"]
    assert (ended.status, ended.error) == ("complete", None)
    row = cli.read(task_id)
    assert row["status"] == "complete" and "waitingFor" not in row and row.get("agentSessionId")
    remote = git.Repo(cfg.git_remote)
    assert remote.git.show(f"{branch}:{CLEAN_FILE}") + "\n" == CLEAN_CONTENT


def test_the_page_shows_a_watcher_the_question_and_its_answer(stack: Any) -> None:
    """The terminal page's module, watching the task read-only, shows the agent's question and that a
    read-write terminal answers it (not how to type it), then the answer once a browser gave it."""
    from tests.integration.refine_support import Page

    cfg = stack.config
    assert cfg.ws_url
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("page-asked")
    cli.put_task(task_id, f"feature/{task_id}", details="[fake:approval tool=fs_write]")
    watch_token = aipm_in(stack.workdir, "token", "--task", task_id, "--read-only", "--ttl", "300")
    token = aipm_in(stack.workdir, "token", "--task", task_id, "--ttl", "300")
    page = Page(cfg.ws_url, watch_token, watch=True, task=task_id, readOnly=True)
    try:
        page.wait(lambda p: "the agent asks:" in p.text, 90, what="the question shown")
        assert "a read-write terminal of this task can answer it" in page.text
        assert "Allow this action?" in page.text

        async def answer() -> None:
            browser = await open_running(cfg.ws_url, token, task_id, cli)
            try:
                await browser.wait_frame(fr.QuestionFrame, timeout=60, pending=True)
                await browser.type("y\r")
                await browser.wait_frame(fr.TaskFrame, timeout=60)
            finally:
                await browser.close()

        asyncio.run(answer())
        page.wait(lambda p: "answered: y" in p.text, 30, what="the answer shown")
    finally:
        page.close()
