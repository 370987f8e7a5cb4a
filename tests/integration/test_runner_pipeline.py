"""The task pipeline's own bookkeeping against the moto server, real git and the fake agent:
worktrees never leak, whatever write fails."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import git
import pytest
from botocore.exceptions import ClientError

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from ec2_runner.gitops import GitWorkspace
from ec2_runner.pipeline import Outcome, PipelineOptions, TaskPipeline
from local.deploy import LocalStackResources
from local.gitremote import ensure_bare_remote
from shared import aws
from shared.branches import DEFAULT_PROTECTED
from shared.dispatch import Dispatcher
from shared.models import Task, TaskSignal
from shared.store import TaskStore, wire_fields
from tests.fixtures import FAKE_AGENT_COMMAND, unique, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class ThrottledRecords(TaskStore):
    """A store whose informational writes are throttled past botocore's retries, as DynamoDB can be."""

    def _record(self, claim: Any, fields: dict[str, Any]) -> None:
        self.recorded = wire_fields(fields)  # the row's names, as written
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
            "UpdateItem",
        )


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return ensure_bare_remote(tmp_path / "remote.git")


def make_pipeline(
    store: TaskStore, tmp_path: Path, remote: Path, runner_id: str = "r1", agent_timeout: float = 30
) -> TaskPipeline:
    home = tmp_path / runner_id
    workspace = GitWorkspace(home / "repo", str(remote), home / "wt")
    agent = make_agent(
        AgentSettings(agent="kiro", command=FAKE_AGENT_COMMAND, timeout=agent_timeout, kill_grace=0.3)
    )
    options = PipelineOptions(protected_branches=DEFAULT_PROTECTED)
    return TaskPipeline(store, workspace, agent, runner_id, options)


def new_task(store: TaskStore, details: str) -> str:
    task_id = unique("pl")
    store.put_new(
        {"id": task_id, "title": "Pipeline task", "details": details, "branch": f"feature/{task_id}"}
    )
    return task_id


def remote_sha(remote: Path, ref: str) -> str:
    return git.Repo(remote).git.for_each_ref("--format=%(objectname)", f"refs/heads/{ref}").strip()


def worktrees(tmp_path: Path, runner_id: str = "r1") -> list[Path]:
    return [p for p in (tmp_path / runner_id / "wt").iterdir() if not p.name.startswith(".")]


class RunningHolder:
    """A task holding its branch in a background thread until ``release()`` stops the runner's
    work and gives it back; its outcome is what ``release()`` returns."""

    def __init__(self, pipeline: TaskPipeline, store: TaskStore, task_id: str) -> None:
        self._stop = threading.Event()
        self._outcome: list[Outcome] = []
        self._worker = threading.Thread(
            target=lambda: self._outcome.append(pipeline.process(task_id, should_stop=self._stop.is_set))
        )
        self._worker.start()
        wait_until(lambda: store.get_row(task_id).get("baseSha"), timeout=30, what="the holder to start")

    def release(self) -> Outcome | None:
        self._stop.set()
        self._worker.join(timeout=30)
        return self._outcome[0] if self._outcome else None


def test_worktree_is_removed_when_recording_the_base_fails(
    ddb: Any, deployed: Any, remote: Path, tmp_path: Path
) -> None:
    # given: a store that cannot record the branch head once the task's worktree is made
    store = ThrottledRecords(ddb, deployed.table_name, branch_locks_table=deployed.branch_locks_table)
    task_id = unique("rec")
    store.put_new(
        {"id": task_id, "title": "T", "details": "[fake:sleep=0.1]", "branch": f"feature/{task_id}"}
    )
    pipeline = make_pipeline(store, tmp_path, remote)
    # when
    with pytest.raises(ClientError):
        pipeline.process(task_id)
    # then: the worktree made for it is gone (the row stays processing: its lease runs out)
    assert "baseSha" in store.recorded
    assert not worktrees(tmp_path)


FROZEN_FEATURES = """#!/bin/sh
while read old new ref; do
  case "$ref" in refs/heads/feature/*) echo "feature branches are frozen" >&2; exit 1 ;; esac
done
exit 0
"""


def test_push_refused_by_the_remote_fails_the_task_and_keeps_the_work_on_the_wip_ref(
    store: TaskStore, remote: Path, tmp_path: Path
) -> None:
    # given: a remote whose hook refuses pushes to feature branches (kiro-wip/ is fine)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(FROZEN_FEATURES)
    hook.chmod(0o755)
    task_id = new_task(store, "[fake:sleep=0.1]")
    # when
    outcome = make_pipeline(store, tmp_path, remote).process(task_id)
    # then: failed with the remote's reason, the agent's commit on kiro-wip/<id> and on the row
    row = store.get_row(task_id)
    wip = remote_sha(remote, f"kiro-wip/{task_id}")
    assert outcome is Outcome.FAILED and row["status"] == "failed"
    assert (
        "feature branches are frozen" in row["error"] and f"kiro-wip/{task_id} at {wip[:12]}" in row["error"]
    )
    assert row["wipSha"] == wip and row["wipRef"] == f"kiro-wip/{task_id}"
    assert "Pipeline task" in git.Repo(remote).git.show(f"{wip}:fake_agent_output.txt")
    assert remote_sha(remote, f"feature/{task_id}") == ""
    assert not worktrees(tmp_path)


def test_wip_ref_holding_other_work_is_never_forced_and_the_retry_resumes_from_the_fresh_ref(
    store: TaskStore, remote: Path, tmp_path: Path
) -> None:
    """A retried task's WIP ref may hold work that the new attempt does not build on (an attempt
    that completed, say): the new WIP goes to kiro-wip/<id>-<attempt>, the row names that ref, and
    the next attempt, on another runner's clone, starts from it."""
    # given: kiro-wip/<id> already holds a commit unrelated to this attempt
    task_id = new_task(store, "[fake:checkpoint=30]")
    with tempfile.TemporaryDirectory() as tmp:
        other = git.Repo.clone_from(str(remote), tmp)
        other.git.config("user.name", "x")
        other.git.config("user.email", "x@example.invalid")
        (Path(tmp) / "old.txt").write_text("old\n")
        other.git.add("old.txt")
        other.git.commit("-m", "WIP: an older attempt")
        other.git.push("origin", f"HEAD:refs/heads/kiro-wip/{task_id}")
        old = other.head.commit.hexsha
    # when: the agent is stopped at its timeout after writing its checkpoint
    first = make_pipeline(store, tmp_path, remote, "r1", agent_timeout=2).process(task_id)
    row = store.get_row(task_id)
    # then: the old WIP is untouched; the new one is on a fresh ref the row names
    fresh = f"kiro-wip/{task_id}-1"
    assert first is Outcome.FAILED and "timed out" in row["error"] and fresh in row["error"]
    assert remote_sha(remote, f"kiro-wip/{task_id}") == old
    assert row["wipRef"] == fresh and row["wipSha"] == remote_sha(remote, fresh)
    # and when: retried on another runner, it resumes from that WIP and completes
    store.reset(task_id)
    second = make_pipeline(store, tmp_path, remote, "r2").process(task_id)
    done = store.get_row(task_id)
    assert second is Outcome.COMPLETE, done.get("error")
    content = git.Repo(remote).git.show(f"{done['commitSha']}:checkpoint.txt")
    assert "started by" in content and "finished by" in content
    assert "wipSha" not in done and "wipRef" not in done


def test_task_given_back_at_shutdown_wakes_the_task_waiting_for_its_branch(
    moto_endpoint: str, fresh_stack: LocalStackResources, remote: Path, tmp_path: Path
) -> None:
    # given: a task at work on a branch and, behind it, a second task of that branch waiting
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
    store = TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table)
    pipeline = make_pipeline(store, tmp_path, remote)
    pipeline.dispatcher = Dispatcher(sqs, fresh_stack.task_queue_url)
    holder = new_task(store, "[fake:sleep=30]")
    branch = store.get_row(holder)["branch"]
    waiting = unique("wait")
    store.put_new({"id": waiting, "title": "Waits", "details": "", "branch": branch})
    running = RunningHolder(pipeline, store, holder)
    assert pipeline.process(waiting) is Outcome.WAITING
    # when: the runner stops and gives the holder back
    outcome = running.release()
    # then: the waiting task is signalled (the holder's own message is made visible by the daemon)
    assert outcome == Outcome.RELEASED
    got = sqs.receive_message(QueueUrl=fresh_stack.task_queue_url, WaitTimeSeconds=2, MaxNumberOfMessages=10)
    assert [TaskSignal.model_validate_json(m["Body"]).task_id for m in got.get("Messages", [])] == [waiting]


def test_a_task_whose_branch_is_locked_waits_pending_even_where_the_status_index_shows_no_holder(
    moto_endpoint: str, fresh_stack: LocalStackResources, remote: Path, tmp_path: Path
) -> None:
    """The lock, not the status index, keeps the branch: a holder the index cannot see (its lock
    item written directly, its row still pending) makes the next task wait, untouched; once the
    lock is gone the task runs."""
    # given
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    store = TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table)
    pipeline = make_pipeline(store, tmp_path, remote)
    task_id = new_task(store, "[fake:sleep=0.1]")
    branch = store.get_row(task_id)["branch"]
    ddb.put_item(
        TableName=fresh_stack.branch_locks_table,
        Item={
            "branch": {"S": branch},
            "taskId": {"S": "unseen-holder"},
            "runnerId": {"S": "r-elsewhere"},
            "attempt": {"N": "1"},
            "leaseExpiresAt": {"N": f"{time.time() + 60:.3f}"},
            "expiresAt": {"N": str(int(time.time()) + 86_400)},
        },
    )
    # when / then
    assert pipeline.process(task_id) is Outcome.WAITING
    row = store.get_row(task_id)
    assert row["status"] == "pending" and "runnerId" not in row and "attempts" not in row
    # the holder ends (its lock goes): the task runs and the lock is gone after it
    ddb.delete_item(TableName=fresh_stack.branch_locks_table, Key={"branch": {"S": branch}})
    assert pipeline.process(task_id) is Outcome.COMPLETE, store.get_row(task_id).get("error")
    got = ddb.get_item(
        TableName=fresh_stack.branch_locks_table, Key={"branch": {"S": branch}}, ConsistentRead=True
    )
    assert "Item" not in got


def test_a_reclaim_refused_by_the_branch_lock_is_woken_when_the_branch_is_free(
    moto_endpoint: str, fresh_stack: LocalStackResources, remote: Path, tmp_path: Path
) -> None:
    """A dead runner's task (processing, lease long past) whose branch another task has taken over
    waits, still processing; the holder's end signals it, as it would a pending waiter."""
    # given: a dead runner's claim of one task, and a live task of the same branch at work
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
    locks = fresh_stack.branch_locks_table
    store = TaskStore(ddb, fresh_stack.table_name, branch_locks_table=locks)
    pipeline = make_pipeline(store, tmp_path, remote)
    pipeline.dispatcher = Dispatcher(sqs, fresh_stack.task_queue_url)
    dead = new_task(store, "[fake:sleep=0.1]")
    branch = store.get_row(dead)["branch"]
    long_ago = TaskStore(
        ddb, fresh_stack.table_name, clock=lambda: time.time() - 3600, branch_locks_table=locks
    )
    long_ago.claim(dead, "r-dead", 60)
    holder = unique("hold")
    store.put_new({"id": holder, "title": "Holds", "details": "[fake:sleep=30]", "branch": branch})
    running = RunningHolder(pipeline, store, holder)
    # when: the dead runner's task is signalled (the reconciler's stale-lease sweep)
    assert pipeline.process(dead) is Outcome.WAITING
    row = store.get_row(dead)
    assert row["status"] == "processing" and row["runnerId"] == "r-dead" and row["attempts"] == 1
    outcome = running.release()
    # then: the holder's end signals the waiting reclaim, which now runs
    assert outcome == Outcome.RELEASED
    got = sqs.receive_message(QueueUrl=fresh_stack.task_queue_url, WaitTimeSeconds=2, MaxNumberOfMessages=10)
    assert [TaskSignal.model_validate_json(m["Body"]).task_id for m in got.get("Messages", [])] == [dead]
    assert pipeline.process(dead) is Outcome.COMPLETE, store.get_row(dead).get("error")
    assert store.get_row(dead)["attempts"] == 2


def test_a_task_waiting_for_a_busy_branch_says_on_its_row_what_it_waits_for_until_it_runs(
    moto_endpoint: str, fresh_stack: LocalStackResources, remote: Path, tmp_path: Path
) -> None:
    """The row of a task held up by its branch names the branch and the task holding it
    (``waitingFor``), stays pending and untouched otherwise; its claim clears the note."""
    # given: a task at work on a branch
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    store = TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table)
    pipeline = make_pipeline(store, tmp_path, remote)
    holder = new_task(store, "[fake:sleep=30]")
    branch = store.get_row(holder)["branch"]
    waiting = unique("wait")
    store.put_new({"id": waiting, "title": "Waits", "details": "", "branch": branch})
    running = RunningHolder(pipeline, store, holder)
    # when: a second task of the branch is signalled
    assert pipeline.process(waiting) is Outcome.WAITING
    # then: its row says what it waits for, and nothing else changed
    row = store.get_row(waiting)
    assert row["waitingFor"] == f"branch {branch} is being worked on by task {holder}"
    assert row["status"] == "pending" and "runnerId" not in row and "attempts" not in row
    assert Task.model_validate(row).waiting_for == row["waitingFor"]
    # and once the holder let the branch go, the task runs and the note is gone
    assert running.release() is Outcome.RELEASED
    assert pipeline.process(waiting) is Outcome.COMPLETE, store.get_row(waiting).get("error")
    assert "waitingFor" not in store.get_row(waiting)
