"""The core pipeline on the local stack: rows inserted with the plain aws CLI, real runner
processes, the fake Kiro CLI in a real pty, a bare git remote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
import pytest

from tests.fixtures import AwsCli, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cli(local_stack: Any) -> AwsCli:
    return AwsCli(local_stack.config.endpoint_url, local_stack.config.table_name)


def final(cli: AwsCli, task_id: str, timeout: float = 60) -> dict:
    return cli.wait_final(task_id, timeout)


def second_run(cli: AwsCli, task_id: str) -> dict:
    """The row once its second attempt has ended."""
    return cli.wait_final(task_id, 60, attempts=2)


def remote_sha(stack: Any, branch: str) -> str | None:
    out = git.Repo(stack.config.git_remote).git.for_each_ref("--format=%(objectname)", f"refs/heads/{branch}")
    return out.strip() or None


def test_row_inserted_with_aws_cli_completes_with_the_agents_commit(local_stack: Any, cli: AwsCli) -> None:
    """put-item -> pending -> processing -> complete; the remote branch holds what the agent wrote."""
    # given
    task_id, branch = unique("cli"), f"feature/add-login-validation-{unique('b')}"
    # when
    cli.put_task(
        task_id, branch, details='Validate emails. [fake:write path=src/login.py text="def validate(): ..."]'
    )
    row = final(cli, task_id)
    # then
    assert row["status"] == "complete", row.get("error")
    assert row["attempts"] == 1 and len(row["commitSha"]) == 40
    assert remote_sha(local_stack, branch) == row["commitSha"]
    remote = git.Repo(local_stack.config.git_remote)
    assert remote.git.show(f"{row['commitSha']}:src/login.py").strip() == "def validate(): ..."
    message = remote.git.log("-1", "--format=%B", row["commitSha"])
    assert "Add login validation" in message and task_id in message
    read_back = cli.get(task_id)  # what an operator reads back with get-item
    assert (read_back["status"], read_back["commitSha"]) == ("complete", row["commitSha"])


def test_reset_to_pending_with_update_item_runs_the_task_again(local_stack: Any, cli: AwsCli) -> None:
    """The seed's fix (update-item status back to pending) re-runs a task: attempts = 2."""
    task_id, branch = unique("reset"), f"feature/{unique('reset')}"
    cli.put_task(task_id, branch)
    first = final(cli, task_id)
    assert first["status"] == "complete", first.get("error")
    cli.reset(task_id)
    second = second_run(cli, task_id)
    assert second["status"] == "complete", second.get("error")
    assert second["commitSha"] != first["commitSha"]
    log = git.Repo(local_stack.config.git_remote).git.log("--format=%H", f"refs/heads/{branch}").split()
    assert log[:2] == [second["commitSha"], first["commitSha"]]


def test_reset_of_a_failed_row_runs_the_task_again(local_stack: Any, cli: AwsCli) -> None:
    """A failed row reset with the seed's update-item line is claimed and run again (attempts = 2)."""
    task_id, branch = unique("refail"), f"feature/{unique('refail')}"
    cli.put_task(task_id, branch, details="[fake:nochange]")
    first = final(cli, task_id)
    assert first["status"] == "failed" and first["attempts"] == 1
    cli.reset(task_id)
    second = second_run(cli, task_id)
    assert second["status"] == "failed" and second["error"] == "agent made no changes"
    starts = [
        line
        for line in map(json.loads, local_stack.fake_agent_log.read_text().splitlines())
        if line.get("event") == "start" and task_id in line.get("cwd", "")
    ]
    assert len(starts) == 2


def remote_refs(stack: Any) -> set[str]:
    out = git.Repo(stack.config.git_remote).git.for_each_ref("--format=%(refname) %(objectname)")
    return set(out.splitlines())


AGENT_FAILURES = {
    "[fake:exit=1]": "exit 1",
    "[fake:exit=3]": "MCP",
    "[fake:exit=4]": "agent not found",
    "[fake:hang]": "timed out",
    "[fake:nochange]": "agent made no changes",
    "[fake:approval tool=fs_write]": "fs_write",
    "[fake:login]": "not logged in",
    "[fake:authfail]": "authentication failed",
}


@pytest.fixture(scope="module")
def agent_failure_rows(cli: AwsCli) -> dict[str, tuple[str, str]]:
    """One task per failure marker, all put in one batch-write-item, so they run side by side in the
    runner's slots instead of one after another: marker -> (task id, branch)."""
    tasks = {marker: (unique("agentfail"), f"feature/{unique('af')}") for marker in AGENT_FAILURES}
    cli.put_tasks(
        [
            {"task_id": t, "branch": b, "details": f"Do the thing. {marker}"}
            for marker, (t, b) in tasks.items()
        ]
    )
    return tasks


@pytest.mark.parametrize(("marker", "error"), list(AGENT_FAILURES.items()), ids=list(AGENT_FAILURES))
def test_agent_failure_ends_failed_with_a_clear_error_and_nothing_pushed(
    local_stack: Any, cli: AwsCli, agent_failure_rows: dict[str, tuple[str, str]], marker: str, error: str
) -> None:
    task_id, branch = agent_failure_rows[marker]
    row = final(cli, task_id)
    assert row["status"] == "failed"
    assert error.lower() in row["error"].lower()
    assert remote_sha(local_stack, branch) is None
    # what the agent printed is kept for the reader, without its colour codes
    assert row["logTail"] and "\x1b[" not in row["logTail"]


UNSAFE_BRANCHES = {
    "main": "protected",
    "master": "protected",
    "-x": "start with '-'",
    "--upload-pack=touch /tmp/pwned": "start with '-'",
    "a..b": "'..'",
    "feature/../../x": "'..'",
    "": "empty",
    "b" * 300: "longer than",
    "with space": "forbidden character",
    "ctl\x1bchar": "forbidden character",
}


@dataclass
class UnsafeRun:
    """All the unsafe-branch rows, put in one batch and run to their end, with what the stack held
    before and after them."""

    ids: dict[str, str]  # branch -> task id
    rows: dict[str, dict]  # branch -> final row
    refs_before: set[str]
    refs_after: set[str]
    dirs_before: set[Path]
    dirs_after: set[Path]


@pytest.fixture(scope="module")
def unsafe_run(local_stack: Any, cli: AwsCli) -> UnsafeRun:
    dirs_before = set(local_stack.workdir.parent.iterdir())
    refs_before = remote_refs(local_stack)
    ids = {branch: unique("branch") for branch in UNSAFE_BRANCHES}
    cli.put_tasks(
        [{"task_id": t, "branch": b, "details": "[fake:write path=pwned.txt text=x]"} for b, t in ids.items()]
    )
    rows = {branch: final(cli, task_id) for branch, task_id in ids.items()}
    return UnsafeRun(
        ids,
        rows,
        refs_before,
        remote_refs(local_stack),
        dirs_before,
        set(local_stack.workdir.parent.iterdir()),
    )


@pytest.mark.parametrize(
    ("branch", "rule"), list(UNSAFE_BRANCHES.items()), ids=[repr(b)[:30] for b in UNSAFE_BRANCHES]
)
def test_unsafe_branch_fails_naming_the_rule_and_touches_nothing(
    unsafe_run: UnsafeRun, branch: str, rule: str
) -> None:
    row = unsafe_run.rows[branch]
    assert row["status"] == "failed" and rule in row["error"]
    # nothing pushed anywhere, nothing made beside the stack, by this row or any other of the batch
    assert unsafe_run.refs_after == unsafe_run.refs_before
    assert not Path("/tmp/pwned").exists()
    assert unsafe_run.dirs_after == unsafe_run.dirs_before


def test_malformed_rows_fail_or_are_skipped_and_the_runner_keeps_serving(
    local_stack: Any, cli: AwsCli
) -> None:
    bad: dict[str, dict[str, Any]] = {
        unique("nobranch"): {"branch": None},
        unique("badtype"): {"prNumber": {"S": "forty-two"}},
        unique("notitle"): {"title": {"N": "12"}},
        unique("huge"): {"details": {"S": "x" * 350_000}},
    }
    items = []
    for task_id, change in bad.items():
        item = {"branch": {"S": f"feature/{task_id}"}, **{k: v for k, v in change.items() if v}}
        now = "2026-11-25T00:00:00.000Z"
        full = {
            "id": {"S": task_id},
            "title": {"S": "Malformed"},
            "details": {"S": "d"},
            "status": {"S": "pending"},
            "createdAt": {"S": now},
            "updatedAt": {"S": now},
            **item,
        }
        if "branch" in change and change["branch"] is None:
            full.pop("branch")
        items.append(full)
    # a status outside the enum is never signalled and never touched
    odd = unique("oddstatus")
    items.append(
        {"id": {"S": odd}, "title": {"S": "t"}, "branch": {"S": "feature/odd"}, "status": {"S": "queued"}}
    )
    # and a good row written after them all (one batch-write-item: one aws CLI process)
    good = unique("good")
    items.append(cli.task_item(good, f"feature/{good}"))
    cli.put_items(items)
    errors = {task_id: final(cli, task_id)["error"] for task_id in bad}
    assert "branch" in errors[next(k for k in bad if k.startswith("nobranch"))]
    assert "prNumber" in errors[next(k for k in bad if k.startswith("badtype"))]
    assert "title" in errors[next(k for k in bad if k.startswith("notitle"))]
    assert "over the" in errors[next(k for k in bad if k.startswith("huge"))]
    assert final(cli, good)["status"] == "complete"
    assert cli.get(odd)["status"] == "queued"
    huge = cli.get(next(k for k in bad if k.startswith("huge")))
    assert len(huge["details"]) == 350_000  # the failure wrote the status, not over the row


def test_two_runners_process_each_of_ten_tasks_exactly_once(local_stack: Any, cli: AwsCli) -> None:
    second_log = local_stack.workdir / f"second-runner-{unique('log')}.log"
    second = local_stack.start_runner(log_path=second_log)
    try:
        wait_until(
            lambda: b"runner started" in second_log.read_bytes(), 60, what="the second runner to start"
        )
        ids = [unique("pair") for _ in range(10)]
        # ten tasks of 2 s in one batch, with both runners polling: one runner's 2 slots cannot take
        # them all before the other takes some
        cli.put_tasks([{"task_id": t, "branch": f"feature/{t}", "details": "[fake:sleep=2]"} for t in ids])
        rows = [final(cli, task_id, timeout=90) for task_id in ids]
        assert [r["status"] for r in rows] == ["complete"] * 10
        assert all(r["attempts"] == 1 for r in rows)
        starts = [json.loads(line) for line in local_stack.fake_agent_log.read_text().splitlines()]
        per_task = {
            task_id: sum(1 for s in starts if s.get("event") == "start" and task_id in s.get("cwd", ""))
            for task_id in ids
        }
        assert per_task == dict.fromkeys(ids, 1)
        assert len({r["runnerId"] for r in rows}) == 2, "both runners should have taken tasks"
        for r in rows:
            assert remote_sha(local_stack, r["branch"]) == r["commitSha"]
    finally:
        second.terminate()
        second.wait(timeout=30)
