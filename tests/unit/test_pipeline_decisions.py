"""The pipeline's decisions, on fakes: the in-memory store (held to TaskStore's contract by
tests/integration/test_store.py), a workspace over an in-memory remote, a scripted agent and a
recording dispatcher. The heartbeat is the real one; its lease is long enough that it never renews
during a test, so every test takes milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ec2_runner.agents import AgentResult
from ec2_runner.gitops import DeadlineError, GitOpError, PushConflictError, RefRejectedError
from ec2_runner.pipeline import Outcome, PipelineOptions, TaskPipeline
from shared.branches import DEFAULT_PROTECTED
from shared.models import ErrorKind, TaskSignal
from tests.fakes.agent import ScriptedAgent
from tests.fakes.dispatcher import RecordingDispatcher
from tests.fakes.memory_store import MemoryTaskStore
from tests.fakes.workspace import FakeWorkspace

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

LEASE = 60.0  # the heartbeat renews every 20 s: never within a test
CHANGE = {"src/feature.py": "def feature() -> int:\n    return 1\n"}


class Clock:
    """Epoch seconds for the store: the wall clock moved by ``offset`` (the pipeline compares
    leases with the wall clock when it looks for a dead runner's task to wake)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Runner:
    store: MemoryTaskStore
    workspace: FakeWorkspace
    agent: ScriptedAgent
    dispatcher: RecordingDispatcher
    clock: Clock
    pipeline: TaskPipeline

    def put(self, task_id: str, branch: str | None = None, **extra: Any) -> str:
        row = {"id": task_id, "title": "Add login validation", "details": "Validate the email."}
        self.store.put_new({**row, "branch": branch or f"feature/{task_id}", **extra})
        return task_id

    def process(self, task_id: str, stop: bool = False) -> Outcome:
        return self.pipeline.process(task_id, should_stop=lambda: stop)


@pytest.fixture
def make(tmp_path: Path) -> Any:
    """A runner ``r1`` on fakes; ``agent`` and the pipeline's options as the test needs them."""

    def make(agent: ScriptedAgent | None = None, **options: Any) -> Runner:
        clock = Clock()
        store = MemoryTaskStore(clock)
        workspace = FakeWorkspace(tmp_path / "wt")
        agent = agent or ScriptedAgent(writes=CHANGE)
        dispatcher = RecordingDispatcher()
        opts = PipelineOptions(protected_branches=DEFAULT_PROTECTED, lease_seconds=LEASE, **options)
        pipeline = TaskPipeline(store, workspace, agent, "r1", opts, dispatcher)  # type: ignore[arg-type]
        return Runner(store, workspace, agent, dispatcher, clock, pipeline)

    return make


def assert_untouched_by_the_runner(runner: Runner) -> None:
    assert runner.agent.runs == [] and runner.workspace.checkouts == []
    assert runner.workspace.pushes == [] and runner.workspace.wip_pushes == []


# -- before the claim ---------------------------------------------------------------------------
def test_a_signal_for_a_row_that_does_not_exist_is_not_claimable(make: Any) -> None:
    runner = make()
    assert runner.process("no-such-task") is Outcome.NOT_CLAIMABLE
    assert_untouched_by_the_runner(runner)
    assert runner.store.rows == {} and runner.dispatcher.sent == []


def test_an_unreadable_row_fails_with_its_reason_without_a_claim(make: Any) -> None:
    # given: a row the backend wrote with an empty title
    runner = make()
    runner.store.rows["bad"] = {"id": "bad", "title": "", "branch": "feature/bad", "status": "pending"}
    # when
    outcome = runner.process("bad")
    # then
    assert outcome is Outcome.FAILED
    row = runner.store.get_row("bad")
    assert row["status"] == "failed" and row["error"].startswith("invalid task row: title")
    assert "runnerId" not in row and "attempts" not in row
    assert runner.store.locks == {}
    assert_untouched_by_the_runner(runner)


@pytest.mark.parametrize("state", ["live", "ended"])
def test_an_unreadable_row_that_is_someone_elses_or_ended_is_left_alone(make: Any, state: str) -> None:
    """Giving up applies only to a row no live runner holds and that has not ended: a stale signal
    for any other unreadable row is not claimable, and the row stays as it was."""
    # given: a row held by r0 under a live lease (or one that completed), then written wrongly
    runner = make()
    task_id = runner.put("odd")
    claim = runner.store.claim(task_id, "r0", LEASE)
    if state == "ended":
        claim.complete("c" * 40)
    runner.store.rows[task_id]["title"] = ""
    before = runner.store.get_row(task_id)
    # when
    outcome = runner.process(task_id)
    # then
    assert outcome is Outcome.NOT_CLAIMABLE
    assert runner.store.get_row(task_id) == before
    assert_untouched_by_the_runner(runner)


def test_a_task_whose_branch_is_held_waits_with_its_row_untouched(make: Any) -> None:
    # given: another task of the branch held by runner r0
    runner = make()
    holder, waiter = runner.put("holder", "feature/shared"), runner.put("waiter", "feature/shared")
    runner.store.claim(holder, "r0", LEASE)
    before = runner.store.get_row(waiter)
    # when
    outcome = runner.process(waiter)
    # then
    assert outcome is Outcome.WAITING
    assert runner.store.get_row(waiter) == before
    assert runner.store.locks["feature/shared"]["taskId"] == holder
    assert_untouched_by_the_runner(runner)
    assert runner.dispatcher.sent == []


def test_a_task_another_runner_holds_is_not_claimable(make: Any) -> None:
    runner = make()
    task_id = runner.put("taken")
    runner.store.claim(task_id, "r0", LEASE)
    before = runner.store.get_row(task_id)
    assert runner.process(task_id) is Outcome.NOT_CLAIMABLE
    assert runner.store.get_row(task_id) == before and before["runnerId"] == "r0"
    assert_untouched_by_the_runner(runner)
    assert runner.dispatcher.sent == []


# -- refusals and the agent's own failures ------------------------------------------------------
@pytest.mark.parametrize(
    ("branch", "rule"),
    [
        ("main", "branch is protected (main); the runner never writes to it"),
        ("release/2.0", "branch is protected (release/*); the runner never writes to it"),
        ("-rf", "branch must not start with '-'"),
        ("kiro-wip/x", "branch is reserved (kiro-wip and kiro-wip/*) for the runner's saved work"),
    ],
)
def test_a_task_on_an_unsafe_branch_fails_naming_the_rule(make: Any, branch: str, rule: str) -> None:
    runner = make()
    task_id = runner.put("unsafe", branch)
    assert runner.process(task_id) is Outcome.FAILED
    row = runner.store.get_row(task_id)
    assert row["status"] == "failed" and row["error"].endswith(rule)
    assert runner.store.locks == {}  # the failure freed the lock its claim took
    assert_untouched_by_the_runner(runner)


def test_a_task_with_oversized_details_fails_naming_the_limit(make: Any) -> None:
    runner = make(max_details_bytes=16)
    task_id = runner.put("big", details="x" * 17)
    assert runner.process(task_id) is Outcome.FAILED
    assert runner.store.get_row(task_id)["error"] == "details is 17 bytes, over the 16-byte limit"
    assert_untouched_by_the_runner(runner)


def test_an_agent_that_fails_fails_the_task_with_its_error_and_tail(make: Any) -> None:
    # given: an agent that exits 1
    result = AgentResult(ok=False, exit_code=1, error="agent failed (exit 1): boom", output="working\nboom\n")
    runner = make(ScriptedAgent(result))
    task_id = runner.put("broken")
    # when
    outcome = runner.process(task_id)
    # then
    assert outcome is Outcome.FAILED
    row = runner.store.get_row(task_id)
    assert row["status"] == "failed" and row["error"] == "agent failed (exit 1): boom"
    assert row["logTail"] == "working\nboom\n" and "leaseExpiresAt" not in row
    assert runner.workspace.pushes == [] and runner.workspace.wip_pushes == []
    assert runner.workspace.removed == [runner.workspace.checkouts[0].path]
    assert runner.store.locks == {}


def test_an_agent_killed_at_its_timeout_fails_with_its_work_kept_on_the_wip_ref(make: Any) -> None:
    # given: an agent that made a change, then was killed (no exit code)
    result = AgentResult(ok=False, exit_code=None, error="agent timed out after 30 s")
    runner = make(ScriptedAgent(result, writes=CHANGE))
    task_id = runner.put("slow")
    # when
    outcome = runner.process(task_id)
    # then: the work is on kiro-wip/<id>, recorded on the row for the retry, and named in the error
    assert outcome is Outcome.FAILED
    [(ref, sha)] = runner.workspace.wip_pushes
    assert ref == f"kiro-wip/{task_id}" and runner.workspace.message(sha).startswith("WIP: ")
    row = runner.store.get_row(task_id)
    assert row["status"] == "failed" and (row["wipSha"], row["wipRef"]) == (sha, ref)
    assert row["error"] == f"agent timed out after 30 s; the agent's work is kept on {ref} at {sha[:12]}"
    assert runner.workspace.pushes == []


@pytest.mark.parametrize("changed", [True, False], ids=["with-work", "no-work"])
def test_a_shutdown_gives_the_task_back_with_a_note(make: Any, changed: bool) -> None:
    # given: the runner is asked to stop while the agent works
    runner = make(ScriptedAgent(writes=CHANGE if changed else {}))
    task_id = runner.put("stopped")
    # when
    outcome = runner.process(task_id, stop=True)
    # then: pending again, without an owner, with a note (and the work saved, if any)
    assert outcome is Outcome.RELEASED
    row = runner.store.get_row(task_id)
    assert row["status"] == "pending" and "runnerId" not in row and "leaseExpiresAt" not in row
    note = "released by runner r1: runner shutting down"
    if changed:
        [(ref, sha)] = runner.workspace.wip_pushes
        assert row["error"] == f"{note}; the agent's work is kept on {ref} at {sha[:12]}"
        assert row["wipSha"] == sha
    else:
        assert row["error"] == note and runner.workspace.wip_pushes == []
    assert runner.workspace.pushes == [] and runner.store.locks == {}


def test_an_agent_that_changed_nothing_fails_with_the_no_changes_error(make: Any) -> None:
    runner = make(ScriptedAgent(), no_changes_error="the agent found nothing to change")
    task_id = runner.put("idle")
    assert runner.process(task_id) is Outcome.FAILED
    row = runner.store.get_row(task_id)
    assert row["error"] == "the agent found nothing to change" and row["logTail"] == "made the change\n"
    assert runner.workspace.pushes == []


def test_an_agent_that_changed_nothing_completes_at_the_base_when_that_is_allowed(make: Any) -> None:
    runner = make(ScriptedAgent(), fail_on_no_changes=False)
    task_id = runner.put("idle")
    assert runner.process(task_id) is Outcome.COMPLETE
    row = runner.store.get_row(task_id)
    assert row["status"] == "complete" and row["commitSha"] == runner.workspace.remote["main"]
    assert runner.workspace.pushes == []


# -- the push -------------------------------------------------------------------------------------
def test_a_task_that_ran_is_pushed_to_its_branch_and_completes(make: Any) -> None:
    runner = make()
    task_id = runner.put("good")
    assert runner.process(task_id) is Outcome.COMPLETE
    [(branch, sha)] = runner.workspace.pushes
    assert branch == f"feature/{task_id}" and f"Task-Id: {task_id}" in runner.workspace.message(sha)
    row = runner.store.get_row(task_id)
    assert row["status"] == "complete" and row["commitSha"] == sha
    assert row["baseSha"] == runner.workspace.checkouts[0].base_sha and "leaseExpiresAt" not in row
    [timeout] = runner.workspace.push_timeouts
    assert timeout is not None and 0 < timeout < LEASE  # the push gets what the proven lease has left
    assert runner.store.locks == {} and runner.workspace.removed == [runner.workspace.checkouts[0].path]


@pytest.mark.parametrize(
    "error",
    [
        PushConflictError("the PR branch 'feature/x' moved during the task and the agent's commit conflicts"),
        GitOpError("git push to 'feature/x' was rejected: pre-receive hook declined"),
    ],
    ids=["conflict", "refused"],
)
def test_a_push_that_fails_fails_the_task_with_the_work_kept(make: Any, error: GitOpError) -> None:
    # given
    runner = make()
    runner.workspace.fail_push = error
    task_id = runner.put("conflict")
    # when
    outcome = runner.process(task_id)
    # then: the commit is kept on the WIP ref, recorded, and named in the error
    assert outcome is Outcome.FAILED
    [commit] = runner.workspace.commits
    assert runner.workspace.wip_pushes == [(f"kiro-wip/{task_id}", commit.sha)]
    row = runner.store.get_row(task_id)
    assert row["status"] == "failed" and row["wipSha"] == commit.sha
    assert row["error"] == f"{error}; the agent's work is kept on kiro-wip/{task_id} at {commit.sha[:12]}"
    assert runner.workspace.pushes == [] and runner.store.locks == {}


def test_a_push_cut_off_at_the_end_of_its_lease_counts_as_a_lost_lease(make: Any) -> None:
    """A push killed at the lease's end may have landed: the task is not failed (the next attempt
    looks for the push first) and the work is kept on the WIP ref."""
    runner = make()
    runner.workspace.fail_push = DeadlineError("git push to 'feature/x' killed after 39.7 s")
    task_id = runner.put("deadline")
    assert runner.process(task_id) is Outcome.LEASE_LOST
    [(ref, sha)] = runner.workspace.wip_pushes
    row = runner.store.get_row(task_id)
    assert row["status"] == "processing" and row["runnerId"] == "r1"  # it ends with its lease
    assert (row["wipSha"], row["wipRef"]) == (sha, ref)
    assert runner.workspace.pushes == []


@pytest.mark.parametrize("how", ["reclaimed", "expired"])
def test_a_lease_lost_before_the_push_pushes_nothing_to_the_branch(make: Any, how: str) -> None:
    """While the agent worked, the lease ran out (and another runner reclaimed the row, or not):
    the renewal before the push is refused, so nothing reaches the task's branch."""
    # given: the store's clock jumps past the lease while the agent works
    holder: list[Any] = []

    def lease_runs_out() -> None:
        runner.clock.offset += LEASE + 1
        if how == "reclaimed":
            holder.append(runner.store.claim(task_id, "r2", LEASE))

    runner = make(ScriptedAgent(writes=CHANGE, during=lease_runs_out))
    task_id = runner.put("lost")
    # when
    outcome = runner.process(task_id)
    # then: the work is saved on the WIP ref only
    assert outcome is Outcome.LEASE_LOST
    assert runner.workspace.pushes == []
    [(ref, sha)] = runner.workspace.wip_pushes
    row = runner.store.get_row(task_id)
    if how == "reclaimed":  # the row is r2's: r1 leaves it alone
        assert row["runnerId"] == "r2" and row["attempts"] == 2 and "wipSha" not in row
        assert runner.store.locks[f"feature/{task_id}"]["runnerId"] == "r2"
    else:  # still r1's until someone reclaims it: the retry starts from the WIP
        assert row["runnerId"] == "r1" and row["status"] == "processing"
        assert (row["wipSha"], row["wipRef"]) == (sha, ref)


# -- reclaims -------------------------------------------------------------------------------------
def test_a_reclaim_whose_dead_owner_had_pushed_completes_without_running_the_agent(make: Any) -> None:
    # given: r0 claimed the task, recorded its base, pushed, and died before writing the status
    runner = make()
    task_id = runner.put("crashed")
    dead = runner.store.claim(task_id, "r0", LEASE)
    dead.record(base_sha=runner.workspace.remote["main"])
    pushed = runner.workspace.add_remote_commit(
        f"feature/{task_id}", f"Add login validation\n\nTask-Id: {task_id}\n", CHANGE
    )
    runner.clock.offset += LEASE + 1
    # when
    outcome = runner.process(task_id)
    # then
    assert outcome is Outcome.COMPLETE
    row = runner.store.get_row(task_id)
    assert row["status"] == "complete" and row["commitSha"] == pushed
    assert row["runnerId"] == "r1" and row["attempts"] == 2
    assert runner.agent.runs == [] and runner.workspace.pushes == []


def test_a_reclaim_whose_dead_owner_had_not_pushed_runs_the_agent_again(make: Any) -> None:
    runner = make()
    task_id = runner.put("crashed-early")
    runner.store.claim(task_id, "r0", LEASE).record(base_sha=runner.workspace.remote["main"])
    runner.workspace.add_remote_commit(f"feature/{task_id}", "someone else's commit\n", {"other": "x"})
    runner.clock.offset += LEASE + 1
    assert runner.process(task_id) is Outcome.COMPLETE
    assert len(runner.agent.runs) == 1
    [(_, sha)] = runner.workspace.pushes
    assert runner.store.get_row(task_id)["commitSha"] == sha


# -- the branch's next task -----------------------------------------------------------------------
@pytest.mark.parametrize("end", ["complete", "failed", "released", "lease-lost"])
def test_the_end_of_a_task_wakes_the_oldest_task_waiting_for_its_branch(make: Any, end: str) -> None:
    # given: a task holding the branch, two older-to-newer waiters, and a task of another branch
    agents = {
        "complete": ScriptedAgent(writes=CHANGE),
        "failed": ScriptedAgent(AgentResult(ok=False, exit_code=1, error="agent failed (exit 1)")),
        "released": ScriptedAgent(writes=CHANGE),
        "lease-lost": ScriptedAgent(writes=CHANGE, during=lambda: setattr(runner.clock, "offset", LEASE + 1)),
    }
    runner = make(agents[end])
    branch = "feature/shared"
    # the holder is the oldest pending row of its branch: given back, it is not its own waiter
    holder = runner.put("holder", branch, createdAt="2026-01-01T00:00:00.000Z")
    runner.put("newer", branch, createdAt="2026-01-03T00:00:00.000Z")
    runner.put("older", branch, createdAt="2026-01-02T00:00:00.000Z")
    runner.put("elsewhere", "feature/other", createdAt="2025-01-01T00:00:00.000Z")
    # when
    outcome = runner.process(holder, stop=end == "released")
    # then
    assert outcome.value == end
    assert runner.dispatcher.sent == [TaskSignal(task_id="older", reason=f"branch {branch} free")]


def test_the_end_of_a_task_wakes_a_dead_runners_task_refused_while_it_ran(make: Any) -> None:
    """A reclaim can wait for a branch too: the row stays processing under its expired lease."""
    # given: r0 died holding task "dead"; "holder" took the expired lock over
    runner = make()
    branch = "feature/shared"
    dead = runner.put("dead", branch)
    runner.clock.offset = -2 * LEASE
    runner.store.claim(dead, "r0", LEASE)
    runner.clock.offset = 0
    holder = runner.put("holder", branch)
    # when
    assert runner.process(holder) is Outcome.COMPLETE
    # then
    assert runner.dispatcher.sent == [TaskSignal(task_id=dead, reason=f"branch {branch} free")]


def test_a_task_with_no_waiters_wakes_nobody(make: Any) -> None:
    runner = make()
    assert runner.process(runner.put("alone")) is Outcome.COMPLETE
    assert runner.dispatcher.sent == []


def test_escape_sequences_in_a_title_or_id_never_reach_the_commit_message_raw(make: Any) -> None:
    """A row's title and id go into the commit message with their escapes and controls removed
    (a clipboard write, a cursor report request, a screen clear, a C1 control); the row keeps its text."""
    runner = make()
    title = "Add \x1b]52;c;ZXZpbA==\x07login\x1b[6n \x1b[2Jvalidation\x9b31m \u202eexe"
    task_id = runner.put("task-\x1b[2Jx", branch="feature/escapes", title=title)
    assert runner.process(task_id) is Outcome.COMPLETE
    (sha,) = [sha for _, sha in runner.workspace.pushes]
    message = runner.workspace.message(sha)
    assert message.startswith("Add login validation exe")
    assert not any(ch in message for ch in "\x1b\x07\x9b\u202e")
    assert runner.store.get_row(task_id)["title"] == title


# -- failure kinds --------------------------------------------------------------------------------
def _unreadable(runner: Runner) -> str:
    runner.store.rows["bad"] = {"id": "bad", "title": "", "branch": "feature/bad", "status": "pending"}
    return "bad"


def _failing_agent(kind: ErrorKind | None, exit_code: int | None = 1) -> ScriptedAgent:
    return ScriptedAgent(AgentResult(ok=False, exit_code=exit_code, error="agent failed", kind=kind))


KIND_CASES: dict[str, tuple[dict[str, Any], Callable[[Runner], str], ErrorKind]] = {
    "unreadable row": ({}, _unreadable, ErrorKind.INVALID_TASK),
    "oversized details": (
        {"max_details_bytes": 16},
        lambda r: r.put("big", details="x" * 17),
        ErrorKind.INVALID_TASK,
    ),
    "protected branch": ({}, lambda r: r.put("unsafe", "main"), ErrorKind.UNSAFE_BRANCH),
    "reserved branch": ({}, lambda r: r.put("unsafe", "kiro-wip/x"), ErrorKind.UNSAFE_BRANCH),
    "no changes": ({"agent": ScriptedAgent()}, lambda r: r.put("idle"), ErrorKind.NO_CHANGES),
    "agent not logged in": (
        {"agent": _failing_agent(ErrorKind.AGENT_NOT_LOGGED_IN, None)},
        lambda r: r.put("login"),
        ErrorKind.AGENT_NOT_LOGGED_IN,
    ),
    "agent auth failed": (
        {"agent": _failing_agent(ErrorKind.AGENT_AUTH_FAILED, 0)},
        lambda r: r.put("auth"),
        ErrorKind.AGENT_AUTH_FAILED,
    ),
    "approval required": (
        {"agent": _failing_agent(ErrorKind.APPROVAL_REQUIRED, None)},
        lambda r: r.put("approval"),
        ErrorKind.APPROVAL_REQUIRED,
    ),
    "agent timeout": (
        {"agent": _failing_agent(ErrorKind.AGENT_TIMEOUT, None)},
        lambda r: r.put("slow"),
        ErrorKind.AGENT_TIMEOUT,
    ),
    "agent exit": (
        {"agent": _failing_agent(ErrorKind.AGENT_EXIT)},
        lambda r: r.put("x"),
        ErrorKind.AGENT_EXIT,
    ),
    "an adapter that gives no kind": (
        {"agent": _failing_agent(None)},
        lambda r: r.put("x"),
        ErrorKind.AGENT_EXIT,
    ),
}


@pytest.mark.parametrize("case", list(KIND_CASES))
def test_each_failure_before_the_push_writes_its_error_kind(make: Any, case: str) -> None:
    """Every way a task fails before its push writes an ``errorKind`` with its ``error``."""
    options, put, kind = KIND_CASES[case]
    runner = make(**options)
    task_id = put(runner)
    assert runner.process(task_id) is Outcome.FAILED
    row = runner.store.get_row(task_id)
    assert row["status"] == "failed" and row["error"]
    assert row["errorKind"] == kind.value


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (PushConflictError("the PR branch 'feature/x' moved during the task"), ErrorKind.PUSH_CONFLICT),
        (
            RefRejectedError("git push to 'feature/x' was rejected: fetch first", True),
            ErrorKind.PUSH_CONFLICT,
        ),
        (
            RefRejectedError("git push to 'feature/x' was rejected: pre-receive hook declined", False),
            ErrorKind.PUSH_REFUSED,
        ),
        (GitOpError("git push to 'feature/x' failed: Could not resolve host"), ErrorKind.GIT_FAILED),
    ],
    ids=["conflict", "moved-again", "refused", "network"],
)
def test_a_failed_push_writes_its_error_kind(make: Any, error: GitOpError, kind: ErrorKind) -> None:
    runner = make()
    runner.workspace.fail_push = error
    task_id = runner.put("push")
    assert runner.process(task_id) is Outcome.FAILED
    row = runner.store.get_row(task_id)
    assert row["errorKind"] == kind.value and row["error"].startswith(str(error))


def test_a_checkout_that_fails_writes_the_git_error_kind(make: Any) -> None:
    runner = make()
    runner.workspace.fail_checkout = GitOpError("git fetch of 'feature/x' failed: Could not resolve host")
    task_id = runner.put("checkout")
    assert runner.process(task_id) is Outcome.FAILED
    row = runner.store.get_row(task_id)
    assert row["errorKind"] == "git_failed" and row["error"].startswith("git fetch of")


def test_a_task_given_back_or_completed_carries_no_error_kind(make: Any) -> None:
    """A shutdown's note in ``error`` is no failure, and a completion clears the last one."""
    runner = make(ScriptedAgent(writes=CHANGE))
    stopped = runner.put("stopped")
    assert runner.process(stopped, stop=True) is Outcome.RELEASED
    assert "errorKind" not in runner.store.get_row(stopped)
    assert runner.process(stopped) is Outcome.COMPLETE
    assert "errorKind" not in runner.store.get_row(stopped)


# -- cancel (aipm task cancel) --------------------------------------------------------------------
def test_a_cancel_while_the_agent_works_keeps_the_work_on_the_wip_ref_and_fails_the_task_cancelled(
    make: Any,
) -> None:
    """The renewal right before the push is refused by the cancel: nothing reaches the task's
    branch, the work goes to kiro-wip/<taskId>, the row ends failed/cancelled with its WIP."""
    holder: list[Runner] = []
    agent = ScriptedAgent(writes=CHANGE, during=lambda: holder[0].store.cancel("t1"))
    runner = make(agent)
    holder.append(runner)
    runner.put("t1")
    # when
    outcome = runner.process("t1")
    # then
    assert outcome is Outcome.FAILED
    row = runner.store.get_row("t1")
    assert (row["status"], row["errorKind"]) == ("failed", "cancelled")
    assert "cancelled by an operator" in row["error"] and "kiro-wip/t1" in row["error"]
    assert runner.workspace.pushes == [] and runner.workspace.wip_pushes
    assert row["wipRef"] == "kiro-wip/t1" and row["wipSha"]


def test_a_reclaimed_task_whose_cancel_its_dead_runner_never_saw_ends_cancelled_without_running(
    make: Any,
) -> None:
    # given: r0 claimed it, was asked to stop, and died before its next renewal
    runner = make()
    runner.put("t2")
    runner.store.claim("t2", "r0", 30)
    runner.store.cancel("t2")
    runner.clock.offset = 31  # r0's lease has run out
    # when: a runner reclaims it (the reconciler's signal)
    outcome = runner.process("t2")
    # then
    assert outcome is Outcome.FAILED
    row = runner.store.get_row("t2")
    assert (row["status"], row["errorKind"], row["attempts"]) == ("failed", "cancelled", 2)
    assert runner.agent.runs == [] and runner.workspace.pushes == []
