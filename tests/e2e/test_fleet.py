"""The fleet as an operator sees it, on the local stack with real runner processes: `aipm runners`
(heartbeat records: live runners with their busy slots, a killed one shown as gone), and a runner
whose agent is not logged in, which takes no task until it is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack import LocalStack
from shared import aws
from shared.store import TaskStore
from tests import prefork
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO, aipm_in, unique, wait_final, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RUNNER = {
    "AGENT": "kiro",
    "AGENT_COMMAND": FAKE_AGENT_COMMAND,
    "AGENT_TIMEOUT": "60",
    "SQS_WAIT_SECONDS": "1",
    "HEARTBEAT_SECONDS": "0.5",
    "AGENT_LOGIN_RECHECK_SECONDS": "0.5",
    "SHUTDOWN_GRACE_SECONDS": "0",
}


@pytest.fixture
def stack(moto_endpoint: str, tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(
        tmp_path / "stack",
        runners=0,
        stack_name=unique("fleet"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        stream_poll_seconds=0.1,
        runner_env=RUNNER,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def fleet(stack: LocalStack) -> dict[str, dict[str, Any]]:
    """`aipm runners --json` in the stack's folder, by runner id."""
    return {r["runnerId"]: r for r in json.loads(aipm_in(stack.workdir, "runners", "--json"))}


def aipm_wide(workdir: Path, *args: str) -> str:
    """`aipm ARGS` as a person runs it in a wide terminal (a table's cells are not folded)."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TOKEN_SECRET", "WS_URL")}
    out = prefork.aipm(args, cwd=workdir, env={**env, "COLUMNS": "250"}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def store_of(stack: LocalStack) -> TaskStore:
    assert stack.config is not None
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=stack.config.endpoint_url)
    return TaskStore(ddb, stack.config.table_name, branch_locks_table=stack.config.branch_locks_table)


def submit(stack: LocalStack, task_id: str, details: str = "x") -> None:
    aipm_in(stack.workdir, "submit", "--id", task_id, "--title", "A task", "--details", details,
            "--branch", f"feature/{task_id}")  # fmt: skip


def logged_out_home(path: Path) -> Path:
    """A fake Kiro CLI home with no session (`kiro-cli logout`)."""
    path.mkdir(parents=True)
    kiro = [sys.executable, str(FAKE_KIRO), "logout"]
    subprocess.run(kiro, env={**os.environ, "FAKE_KIRO_HOME": str(path)}, check=True, capture_output=True)
    return path


def test_runners_shows_two_live_runners_with_their_busy_slots_then_one_gone_after_it_is_killed(
    stack: LocalStack,
) -> None:
    # given: two runners of two slots each, and three tasks that take a while
    first = stack.start_runner({"RUNNER_ID": "runner-a", "RUNNER_SLOTS": "2"})
    second = stack.start_runner({"RUNNER_ID": "runner-b", "RUNNER_SLOTS": "2"})
    tasks = [unique("fleet-busy") for _ in range(3)]
    for task_id in tasks:
        submit(stack, task_id, details="[fake:sleep=60]")

    # when: all three run
    def all_running() -> dict[str, dict[str, Any]] | None:
        runners = fleet(stack)
        held = sorted(t for r in runners.values() for t in r["tasks"])
        return runners if set(runners) == {"runner-a", "runner-b"} and held == sorted(tasks) else None

    runners = wait_until(all_running, 90, interval=0.3, what="both runners to hold the three tasks")

    # then: both live, each with its busy slots and the tasks it holds, its agent logged in
    for record in runners.values():
        assert record["liveness"] == "live" and record["state"] == "running", record
        assert record["slotsTotal"] == 2 and record["slotsBusy"] == len(record["tasks"]), record
        assert record["agent"] == "kiro" and record["agentLoggedIn"] is True, record
        assert record["host"] and record["version"]
    assert sum(r["slotsBusy"] for r in runners.values()) == 3

    # when: one runner is killed (no goodbye)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)

    # then: it is shown as gone, the other still live, in the table too
    def gone() -> dict[str, dict[str, Any]] | None:
        runners = fleet(stack)
        return runners if runners["runner-b"]["liveness"] == "gone" else None

    runners = wait_until(gone, 60, interval=0.3, what="runner-b to be shown as gone")
    assert runners["runner-a"]["liveness"] == "live"
    table = aipm_wide(stack.workdir, "runners")
    line_b = next(line for line in table.splitlines() if "runner-b" in line)
    line_a = next(line for line in table.splitlines() if "runner-a" in line)
    assert "gone" in line_b and "running" in line_a and "1 live of 2" in table
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    # a runner that stops says so in its last record
    assert fleet(stack)["runner-a"]["liveness"] == "stopped"


def test_a_runner_whose_agent_is_not_logged_in_leaves_the_task_for_one_that_is_and_takes_tasks_once_logged_in(
    stack: LocalStack, tmp_path: Path
) -> None:
    store = store_of(stack)
    home = logged_out_home(tmp_path / "kiro-home")
    log = tmp_path / "logged-out.log"
    # given: the only runner's agent is not logged in
    out = stack.start_runner({"RUNNER_ID": "runner-out", "FAKE_KIRO_HOME": str(home)}, log_path=log)
    wait_until(
        lambda: fleet(stack).get("runner-out", {}).get("state") == "waiting_for_login",
        60,
        interval=0.3,
        what="the runner to say it waits for a login",
    )
    record = fleet(stack)["runner-out"]
    assert record["agentLoggedIn"] is False and "not logged in" in record["agentLogin"]
    assert record["liveness"] == "live"
    assert "the agent is not logged in" in log.read_text()

    # when: a task comes; then a runner whose agent is logged in starts
    task = unique("fleet-login")
    submit(stack, task)
    stack.start_runner({"RUNNER_ID": "runner-in"})

    # then: the logged-in runner does it; the other never claimed it
    row = wait_final(store, task, timeout=90)
    assert row["status"] == "complete" and row["runnerId"] == "runner-in" and row["attempts"] == 1
    assert task not in log.read_text()

    # when: the first runner's agent is logged in, and the other runner stops
    subprocess.run(
        [sys.executable, str(FAKE_KIRO), "login"],
        env={**os.environ, "FAKE_KIRO_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    wait_until(
        lambda: fleet(stack)["runner-out"]["state"] == "running",
        60,
        interval=0.3,
        what="the runner to take tasks once logged in",
    )
    stack.runners[-1].send_signal(signal.SIGTERM)
    stack.runners[-1].wait(timeout=60)
    later = unique("fleet-later")
    submit(stack, later)

    # then: it takes tasks now
    row = wait_final(store, later, timeout=90)
    assert row["status"] == "complete" and row["runnerId"] == "runner-out"
    assert fleet(stack)["runner-out"]["agentLoggedIn"] is True
    assert "the agent is logged in now" in log.read_text()
    out.send_signal(signal.SIGTERM)
    out.wait(timeout=60)
