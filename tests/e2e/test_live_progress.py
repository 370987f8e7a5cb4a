"""Live progress and cancel on the local stack, as operators and browsers use them: a real runner
process on the fake agent, the WebSocket gateway stand-in, `aipm logs --follow`, a read-only browser
watching the run, the row's logTail while it runs, and `aipm task cancel` of pending and running
tasks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from shared import frames as fr
from tests import prefork
from tests.fixtures import FAKE_AGENT_COMMAND, AwsCli, aipm_in, unique, wait_until
from tests.integration.refine_support import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LEASE_SECONDS = 9  # a heartbeat every 3 s


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("live")
    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique("lv"),
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
            "LEASE_SECONDS": str(LEASE_SECONDS),
            "LOG_TAIL_SECONDS": "0.5",
        },
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def aipm(stack: Any, *args: str) -> str:
    return aipm_in(stack.workdir, *args)


def aipm_run(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``aipm ARGS`` in the stack's folder, whatever its exit code."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TOKEN_SECRET", "WS_URL")}
    return prefork.aipm(args, cwd=stack.workdir, env=env, timeout=60)


def agent_processes(marker: str) -> list[int]:
    """Live agent processes (the fake kiro-cli) whose command line holds ``marker`` (the task's prompt
    carries it): not the runner's own git, whose cleanup of the task's worktree may follow the row."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and b"fake_agent" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def started(cli: AwsCli, task_id: str) -> dict:
    return wait_until(
        lambda: (row := cli.read(task_id)).get("status") == "processing" and row,
        60,
        interval=0.2,
        what=f"{task_id} to start",
    )


class Follow:
    """`aipm logs ID --follow` as a user runs it, its stdout read line by line in a thread."""

    def __init__(self, stack: Any, task_id: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TOKEN_SECRET", "WS_URL")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ec2_runner.cli", "logs", task_id, "--follow"],
            cwd=stack.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_line(self, needle: str, timeout: float = 60) -> str:
        return wait_until(
            lambda: next((line for line in self.lines if needle in line), None),
            timeout,
            what=f"`aipm logs --follow` to print {needle!r}",
        )

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        assert self.proc.stderr
        return code, self.proc.stderr.read()


def test_logs_follow_and_a_read_only_browser_watch_a_running_task_from_its_start(stack: Any) -> None:
    cfg = stack.config
    assert cfg.ws_url
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("watch")
    cli.put_task(task_id, f"feature/{task_id}", details="[fake:sleep=120]")
    started(cli, task_id)
    follow = Follow(stack, task_id)
    token = aipm(stack, "token", "--task", task_id, "--read-only", "--ttl", "300")

    async def scenario() -> tuple[fr.OpenedFrame, str, str, fr.TaskFrame, fr.ExitFrame]:
        browser = await Browser.connect(cfg.ws_url, token)
        try:
            # when: a read-only browser opens the task while it runs
            opened = await browser.open(task_id=task_id, timeout=30)
            await browser.wait_text("working... step 3", timeout=60)
            status = (await asyncio.to_thread(cli.read, task_id))["status"]
            text = browser.text
            # the run ends (cancelled here, so the test does not wait for it)
            said = await asyncio.to_thread(aipm, stack, "task", "cancel", task_id)
            assert "cancel requested" in said
            ended = await browser.wait_frame(fr.TaskFrame, timeout=60)
            exited = await browser.wait_frame(fr.ExitFrame, timeout=30)
            return opened, status, text, ended, exited
        finally:
            await browser.close()

    # the follow and the row, checked while the run goes on (before the browser cancels it)
    checks: dict[str, Any] = {}

    def check_follow_and_row() -> None:
        follow.wait_line("working... step 2")
        checks["status after follow"] = cli.read(task_id)["status"]
        checks["row"] = wait_until(
            lambda: "working... step" in ((r := cli.read(task_id)).get("logTail") or "") and r,
            30,
            interval=0.2,
            what="logTail to show the run's progress",
        )

    checker = threading.Thread(target=check_follow_and_row)
    checker.start()
    checker.join(90)
    opened, status_while_watched, text, ended, exited = asyncio.run(scenario())
    # then: the browser watched the headless run, from its very first line, before the task ended
    assert opened.headless is True and opened.task_id == task_id
    assert status_while_watched == "processing"
    assert "kiro-cli (fake, for tests)" in text
    assert text.index("kiro-cli (fake, for tests)") < text.index("working... step 1")
    assert "\r\n" in text and "\x1b" not in text  # terminal text, without the agent's colours
    # and `aipm logs --follow` printed the same output as it happened
    assert checks["status after follow"] == "processing"
    # and the row's logTail was refreshed while the task ran, without the agent's colours
    row = checks["row"]
    assert row["status"] == "processing" and "\x1b" not in row["logTail"]
    # then: both see the row's final word, and the follow exits non-zero for a failed task
    assert (ended.status, ended.error_kind) == ("failed", "cancelled")
    assert exited.code == 1
    code, err = follow.finish()
    assert code == 1 and "failed [cancelled]" in err, err


def test_cancel_of_a_running_task_stops_its_agent_and_keeps_its_work_on_the_wip_ref(stack: Any) -> None:
    cfg = stack.config
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("cancel")
    cli.put_task(task_id, f"feature/{task_id}", details="[fake:checkpoint=120]")
    started(cli, task_id)
    wait_until(
        lambda: "checkpoint" in (cli.read(task_id).get("logTail") or "") or agent_processes(task_id),
        60,
        what="the agent to start",
    )
    assert agent_processes(task_id), "the agent runs before the cancel"
    wait_until(lambda: "working" in (cli.read(task_id).get("logTail") or ""), 30, what="the agent to work")

    # when
    out = aipm_run(stack, "task", "cancel", task_id, "--json")
    # then: asked, not ended yet; the runner stops it at its next heartbeat
    assert out.returncode == 0, out.stderr
    assert '"outcome": "requested"' in out.stdout
    row = cli.wait_final(task_id, 60)
    assert (row["status"], row["errorKind"], row["attempts"]) == ("failed", "cancelled", 1)
    assert "cancelled by an operator" in row["error"] and row["wipRef"] == f"kiro-wip/{task_id}"
    assert agent_processes(task_id) == []
    remote = git.Repo(cfg.git_remote)
    assert remote.git.rev_parse(f"refs/heads/kiro-wip/{task_id}") == row["wipSha"]
    assert "checkpoint.txt" in remote.git.ls_tree("--name-only", row["wipSha"]).split()
    # stopped by its runner inside the lease, not by the lease running out
    from datetime import datetime

    asked = datetime.fromisoformat(row["cancelRequestedAt"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(row["finishedAt"].replace("Z", "+00:00"))
    assert (ended - asked).total_seconds() < LEASE_SECONDS


def test_cancel_of_a_pending_task_ends_it_at_once_and_a_complete_task_is_refused(stack: Any) -> None:
    cfg = stack.config
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    branch = f"feature/{unique('busy')}"
    holder, waiting = unique("holder"), unique("waiting")
    cli.put_task(holder, branch, details="[fake:sleep=120]")
    started(cli, holder)
    cli.put_task(waiting, branch)  # the branch is busy: it stays pending
    wait_until(lambda: cli.read(waiting).get("waitingFor"), 60, what=f"{waiting} to wait for its branch")

    out = aipm_run(stack, "task", "cancel", waiting)
    assert out.returncode == 0, out.stderr
    row = cli.read(waiting)  # no waiting: the one write has landed when the command returns
    assert (row["status"], row["errorKind"]) == ("failed", "cancelled") and row.get("attempts", 0) == 0

    aipm(stack, "task", "cancel", holder)
    assert cli.wait_final(holder, 60)["errorKind"] == "cancelled"

    done = unique("done")
    cli.put_task(done, f"feature/{done}")
    assert cli.wait_final(done, 60)["status"] == "complete"
    refused = aipm_run(stack, "task", "cancel", done)
    assert refused.returncode == 1 and "is already complete" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli.read(done)["status"] == "complete"
    missing = aipm_run(stack, "task", "cancel", unique("nope"))
    assert missing.returncode == 3 and "no task" in missing.stderr


def test_logs_without_follow_prints_the_rows_log_tail(stack: Any) -> None:
    cfg = stack.config
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    task_id = unique("tail")
    cli.put_task(task_id, f"feature/{task_id}", details='[fake:say text="hello from the agent"]')
    row = cli.wait_final(task_id, 60)
    out = aipm_run(stack, "logs", task_id)
    assert out.returncode == 0, out.stderr
    assert "hello from the agent" in out.stdout and out.stdout in (row["logTail"], row["logTail"] + "\n")
    assert f"task {task_id}: complete" in out.stderr
    followed = aipm_run(stack, "logs", task_id, "--follow")  # an ended task: its tail, its exit code
    assert followed.returncode == 0 and "hello from the agent" in followed.stdout
    missing = aipm_run(stack, "logs", unique("nope"))
    assert missing.returncode == 3 and "no task" in missing.stderr and "Traceback" not in missing.stderr
