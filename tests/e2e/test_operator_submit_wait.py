"""``aipm submit --wait`` as an operator runs it in the local stack's folder: a real ``aipm``
process follows a task that a real runner (the fake Kiro CLI) works on, to its end."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from ec2_runner.commands.rows import last_line
from tests import prefork
from tests.fixtures import unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def submit_and_wait(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``aipm submit ARGS --wait`` in the stack's folder (it finds the stack from .aipm/local.json)."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TASK_QUEUE_URL", "COLUMNS")}
    return prefork.aipm(["submit", *args, "--wait"], cwd=stack.workdir, env=env, timeout=120)


def test_submit_wait_follows_a_task_to_complete_and_shows_the_agents_last_line(local_stack: Any) -> None:
    """``--wait --json``: progress on stderr (status, elapsed, the agent's last output line), the
    final row as JSON on stdout, exit 0."""
    task_id = unique("wait-ok")
    done = submit_and_wait(
        local_stack,
        "--id", task_id, "--title", "Add login validation", "--branch", f"feature/{task_id}",
        "--details", '[fake:write path=login.py text="ok"] [fake:say text="validating the emails"]',
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    final = json.loads(done.stdout)
    assert (final["id"], final["status"], final["attempts"]) == (task_id, "complete", 1)
    assert len(final["commitSha"]) == 40
    progress = [line for line in done.stderr.splitlines() if line.startswith(task_id)]
    assert progress[0].split()[1] == "pending"
    assert progress[-1].split()[1] == "complete"
    assert "validating the emails" in final["logTail"]
    assert last_line(final["logTail"]) in progress[-1]


def test_submit_wait_exits_1_when_the_task_fails_and_says_why(local_stack: Any) -> None:
    """A task whose agent fails: exit 1; stdout holds the id, then the failure with its kind."""
    task_id = unique("wait-bad")
    done = submit_and_wait(
        local_stack, "--id", task_id, "--title", "Break", "--branch", f"feature/{task_id}",
        "--details", "[fake:exit=1]",
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    out = done.stdout.splitlines()
    assert out[0] == task_id
    summary = "\n".join(out[1:])
    assert "failed" in summary and "agent_exit" in summary
    assert any(line.startswith(task_id) and " failed " in f"{line} " for line in done.stderr.splitlines())
