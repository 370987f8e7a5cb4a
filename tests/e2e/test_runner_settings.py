"""The runner's task settings, set the way an operator sets them (environment variables of a real
runner process on the local stack): protected branches, the default branch, the no-changes rule."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from local.stack import LocalStack
from shared import aws
from shared.store import TaskStore
from tests.fixtures import FAKE_AGENT_COMMAND, unique, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SETTINGS = {
    "AGENT": "kiro",
    "AGENT_COMMAND": FAKE_AGENT_COMMAND,
    "AGENT_TIMEOUT": "20",
    "SQS_WAIT_SECONDS": "1",
    "PROTECTED_BRANCHES": "prod/*,main",
    "DEFAULT_BRANCH": "develop",
    "NO_CHANGES_ERROR": "the agent found nothing to change for this story",
}


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    work = tmp_path_factory.mktemp("settings")
    stack = LocalStack(
        work,
        runners=0,
        stack_name=unique("cfg"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        stream_poll_seconds=0.2,
    )
    config = stack.start()
    # the team works off `develop`: new PR branches must start there
    with tempfile.TemporaryDirectory() as tmp:
        repo = git.Repo.clone_from(config.git_remote, tmp)
        repo.git.checkout("-b", "develop")
        (Path(tmp) / "DEVELOP.md").write_text("develop only\n")
        repo.git.add("DEVELOP.md")
        repo.git.commit("-m", "develop", author="Dev <dev@example.invalid>")
        repo.git.push("origin", "develop")
    stack.start_runner(SETTINGS, log_path=work / "runner.log")
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def store(stack: LocalStack) -> TaskStore:
    assert stack.config
    ddb = aws.client("dynamodb", region=stack.config.region, endpoint_url=stack.config.endpoint_url)
    assert stack.config.branch_locks_table
    return TaskStore(ddb, stack.config.table_name, branch_locks_table=stack.config.branch_locks_table)


def _run(store: TaskStore, branch: str, details: str) -> dict:
    task_id = unique("cfg")
    store.put_new({"id": task_id, "title": "Settings", "details": details, "branch": branch})
    return wait_final(store, task_id, timeout=60)


def _remote(stack: LocalStack, *args: str) -> str:
    assert stack.config
    return subprocess.run(
        ["git", "--git-dir", stack.config.git_remote, *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_protected_branches_come_from_the_setting(stack: LocalStack, store: TaskStore) -> None:
    before = _remote(stack, "for-each-ref")
    row = _run(store, "prod/eu", "[fake:write path=x.txt text=x]")
    assert row["status"] == "failed" and "protected (prod/*)" in row["error"]
    # the setting replaces the defaults: `main` is in it, so it is still refused
    row = _run(store, "main", "[fake:write path=x.txt text=x]")
    assert row["status"] == "failed" and "protected (main)" in row["error"]
    assert _remote(stack, "for-each-ref") == before


def test_a_new_pr_branch_starts_from_the_default_branch_setting(stack: LocalStack, store: TaskStore) -> None:
    branch = f"feature/{unique('fromdev')}"
    row = _run(store, branch, "[fake:write path=feature.txt text=new]")
    assert row["status"] == "complete", row.get("error")
    assert _remote(stack, "rev-parse", f"{row['commitSha']}^") == _remote(stack, "rev-parse", "develop")
    assert _remote(stack, "show", f"{branch}:DEVELOP.md") == "develop only"


def test_no_changes_fails_with_the_configured_error(stack: LocalStack, store: TaskStore) -> None:
    row = _run(store, f"feature/{unique('same')}", "[fake:nochange]")
    assert row["status"] == "failed"
    assert row["error"] == "the agent found nothing to change for this story"


def test_no_changes_may_complete_when_the_setting_allows_it(
    stack: LocalStack, store: TaskStore, tmp_path: Path
) -> None:
    # a runner configured to accept an agent that changed nothing (e.g. a review-only agent)
    for proc in stack.runners:
        proc.terminate()
        proc.wait(timeout=30)
    # a receive the stopped runner had in flight ends on the server within SQS_WAIT_SECONDS; a task
    # put before that could be handed to it (and come back only after the receive's visibility)
    time.sleep(float(SETTINGS["SQS_WAIT_SECONDS"]) + 0.5)
    stack.start_runner({**SETTINGS, "FAIL_ON_NO_CHANGES": "false"}, log_path=tmp_path / "runner.log")
    row = _run(store, f"feature/{unique('same')}", "[fake:nochange]")
    assert row["status"] == "complete", row.get("error")
    assert row["commitSha"] == _remote(stack, "rev-parse", "develop")  # nothing new was committed
