"""Leases against the moto server with the real pipeline, git and the fake agent: a runner that lost
its row never pushes to the task's branch, and a live runner's heartbeat keeps a long task its own."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pytest
from botocore.exceptions import EndpointConnectionError

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from ec2_runner.daemon import Runner
from ec2_runner.gitops import GitWorkspace
from ec2_runner.pipeline import Heartbeat, Outcome, PipelineOptions, TaskPipeline, wip_ref
from local.deploy import LocalStackResources
from local.gitremote import ensure_bare_remote
from shared import aws
from shared.branches import DEFAULT_PROTECTED
from shared.dispatch import Dispatcher
from shared.models import TaskSignal
from shared.store import LeaseLostError, TaskStore
from tests.fixtures import FAKE_AGENT_COMMAND, unique, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return ensure_bare_remote(tmp_path / "remote.git")


@pytest.fixture
def agent_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake-agent.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(path))
    return path


def make_pipeline(
    store: TaskStore,
    tmp_path: Path,
    remote: Path,
    runner_id: str,
    lease_seconds: float,
    dispatcher: Dispatcher | None = None,
) -> TaskPipeline:
    workspace = GitWorkspace(tmp_path / runner_id / "repo", str(remote), tmp_path / runner_id / "wt")
    agent = make_agent(AgentSettings(agent="kiro", command=FAKE_AGENT_COMMAND, timeout=60, kill_grace=0.3))
    options = PipelineOptions(protected_branches=DEFAULT_PROTECTED, lease_seconds=lease_seconds)
    return TaskPipeline(store, workspace, agent, runner_id, options, dispatcher=dispatcher)


class LateRenewals(TaskStore):
    """The embedded AWS pausing under the renewals, as in the soak: once ``paused()`` is true, each
    renewal is written as usual (its lease counted from before the call) but its answer comes back
    ``stall`` seconds later, after the lease it wrote has run out."""

    def __init__(self, *args: Any, paused: Callable[[], bool], stall: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paused = paused
        self._stall = stall
        self.late: list[float] = []  # the leases written whose answers came back late

    def _renew(self, claim: Any, lease_seconds: float) -> float:
        late = self._paused()
        lease = super()._renew(claim, lease_seconds)
        if late:
            time.sleep(self._stall)
            self.late.append(lease)
        return lease


def stall_branch_pushes(remote: Path, seconds: float, log: Path) -> None:
    """A pre-receive hook on the bare remote: pushes to feature/* stall ``seconds`` (a slow remote);
    every push notes when it arrived and its refs in ``log``."""
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "refs=$(cat)\n"
        f"echo \"$(date +%s.%N) $refs\" >> '{log}'\n"
        'case "$refs" in *refs/heads/feature/*) '
        f"sleep {seconds} ;; esac\n"
    )
    hook.chmod(0o755)


def new_task(store: TaskStore, details: str) -> str:
    task_id = unique("lease")
    store.put_new({"id": task_id, "title": "Lease task", "details": details, "branch": f"feature/{task_id}"})
    return task_id


def agent_events(log: Path, branch: str) -> list[dict]:
    if not log.exists():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("branch") == branch or e.get("event") == "end"]


def agent_starts(log: Path, branch: str) -> list[dict]:
    return [e for e in agent_events(log, branch) if e["event"] == "start" and e.get("branch") == branch]


def remote_sha(remote: Path, ref: str) -> str:
    return git.Repo(remote).git.for_each_ref("--format=%(objectname)", f"refs/heads/{ref}").strip()


def test_wip_ref_is_the_task_id_under_the_runners_prefix() -> None:
    """kiro-wip/<taskId>, as documented; an id that is no valid ref gets a safe name instead."""
    assert wip_ref("abc-123") == "kiro-wip/abc-123"
    assert wip_ref("bad..id").startswith("kiro-wip/bad") and ".." not in wip_ref("bad..id")


def test_heartbeat_that_cannot_renew_for_about_a_lease_declares_it_lost() -> None:
    """Renewals failing with transient errors (not a lost condition) still end the lease locally,
    a margin before the row's lease could have run out, so the runner stops before anyone reclaims."""
    calls: list[float] = []

    def renew() -> None:
        calls.append(time.monotonic())
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    started = time.monotonic()
    with Heartbeat(renew, interval=0.2, lease_seconds=2.0) as beat:
        assert not beat.is_lost()
        wait_until(beat.is_lost, timeout=5, interval=0.02, what="the heartbeat to give the lease up")
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.0, elapsed  # before the 2 s lease, after a few failed renewals
    assert len(calls) >= 3
    assert beat.lost.is_set() and "renew" in beat.reason


def test_heartbeat_that_renews_keeps_the_lease_past_its_length() -> None:
    renewals: list[float] = []
    with Heartbeat(lambda: renewals.append(time.monotonic()), interval=0.2, lease_seconds=1.0) as beat:
        time.sleep(2.0)  # twice the lease
        assert not beat.is_lost()
    assert len(renewals) >= 5


def test_heartbeat_stops_at_once_when_the_row_is_someone_elses() -> None:
    def renew() -> None:
        raise LeaseLostError("t")

    with Heartbeat(renew, interval=0.1, lease_seconds=60) as beat:
        wait_until(beat.is_lost, timeout=5, interval=0.02, what="the lease to be lost")
    assert "another runner" in beat.reason


def test_runner_whose_row_was_taken_over_mid_task_does_not_push_to_the_task_branch(
    ddb: Any, deployed: Any, remote: Path, tmp_path: Path, agent_log: Path
) -> None:
    """The heartbeat beats every 20 s, so only the renewal right before the push can notice.
    The intruder's reclaim takes the task's own branch lock over too."""
    # given: a 60 s lease and an agent that works 3 s
    lock_table = deployed.branch_locks_table
    store = TaskStore(ddb, deployed.table_name, branch_locks_table=lock_table)
    pipeline = make_pipeline(store, tmp_path, remote, "first", lease_seconds=60)
    task_id = new_task(store, "[fake:sleep=3]")
    branch = f"feature/{task_id}"
    outcome: list[Outcome] = []
    worker = threading.Thread(target=lambda: outcome.append(pipeline.process(task_id)))
    worker.start()
    wait_until(lambda: agent_starts(agent_log, branch), timeout=30, what="the agent to start")
    # when: another runner takes the row over (its clock says the lease has run out)
    intruder = TaskStore(
        ddb, deployed.table_name, clock=lambda: time.time() + 600, branch_locks_table=lock_table
    )
    intruder.claim(task_id, "intruder", 600)
    worker.join(timeout=60)
    # then: nothing on the task's branch; the work kept on kiro-wip/<id>; the row is the intruder's
    assert outcome == [Outcome.LEASE_LOST]
    assert remote_sha(remote, branch) == "", "the runner pushed after losing its lease"
    wip = remote_sha(remote, f"kiro-wip/{task_id}")
    assert wip and "Lease task" in git.Repo(remote).git.show(f"{wip}:fake_agent_output.txt")
    row = store.get_row(task_id)
    assert row["status"] == "processing" and row["runnerId"] == "intruder" and row["attempts"] == 2
    assert not list((tmp_path / "first" / "wt").iterdir())  # worktree cleaned up
    # the branch stays the intruder's: the first runner's end did not free it
    lock = ddb.get_item(TableName=lock_table, Key={"branch": {"S": branch}}, ConsistentRead=True).get(
        "Item", {}
    )
    assert lock["runnerId"] == {"S": "intruder"} and lock["attempt"] == {"N": "2"}


def test_task_longer_than_the_lease_is_not_reclaimed_while_its_runner_lives(
    moto_endpoint: str, fresh_stack: LocalStackResources, remote: Path, tmp_path: Path, agent_log: Path
) -> None:
    """A 3 s lease, an agent that works 7.5 s, two runners, and duplicate signals (as the reconciler
    sends) after the first lease would have run out: the second runner never gets the row."""
    # given
    lease = 3.0
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint, read_timeout=15)
    store = TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table)
    dispatcher = Dispatcher(sqs, fresh_stack.task_queue_url)
    runners = [
        Runner(
            sqs,
            fresh_stack.task_queue_url,
            make_pipeline(store, tmp_path, remote, f"runner-{i}", lease, dispatcher),
            slots=1,
            wait_time_seconds=1,
            lease_seconds=lease,
        )
        for i in range(2)
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        task_id = new_task(store, "[fake:sleep=7.5]")
        branch = f"feature/{task_id}"
        dispatcher.send(TaskSignal(task_id=task_id, reason="insert"))
        wait_until(lambda: agent_starts(agent_log, branch), timeout=30, what="the agent to start")
        first_owner = store.get_row(task_id)["runnerId"]
        # when: signals arrive again once the first lease (3 s) would have run out without renewals
        time.sleep(lease + 0.5)
        for _ in range(2):
            dispatcher.send(TaskSignal(task_id=task_id, reason="reconciler"))
            time.sleep(1.0)
            assert store.get_row(task_id)["runnerId"] == first_owner
        row = wait_until(
            lambda: (r := store.get_row(task_id))["status"] in ("complete", "failed") and r,
            timeout=60,
            what="the task to end",
        )
    finally:
        for r in runners:
            r.request_stop()
        for t in threads:
            t.join(timeout=30)
    # then
    assert row["status"] == "complete", row.get("error")
    assert row["attempts"] == 1 and row["runnerId"] == first_owner
    assert len(agent_starts(agent_log, branch)) == 1
    assert sum(r.outcomes.get("not-claimable", 0) for r in runners) >= 1  # the signals were refused
    assert remote_sha(remote, branch) == row["commitSha"]


def test_a_renewal_whose_answer_comes_after_its_lease_ran_out_proves_nothing(
    ddb: Any, deployed: Any, remote: Path, tmp_path: Path, agent_log: Path
) -> None:
    """The renewal right before the push succeeds, but only after the lease it wrote has expired:
    by then another runner may have reclaimed the row, so nothing is pushed and the work is kept."""
    # given: a 3 s lease, and renewals whose answers come back 3.5 s late from when the agent ends
    lease = 3.0
    store = LateRenewals(
        ddb,
        deployed.table_name,
        paused=lambda: any(e["event"] == "end" for e in agent_events(agent_log, "")),
        stall=lease + 0.5,
        branch_locks_table=deployed.branch_locks_table,
    )
    pipeline = make_pipeline(store, tmp_path, remote, "slow", lease_seconds=lease)
    task_id = new_task(store, "[fake:sleep=0.5]")
    branch = f"feature/{task_id}"
    before = remote_sha(remote, branch)
    # when
    outcome = pipeline.process(task_id)
    # then: the branch is as it was; the work is on kiro-wip/<id> and recorded; the task is not complete
    assert store.late, "no renewal came back late: the test did not stall the proof"
    assert outcome is Outcome.LEASE_LOST
    assert remote_sha(remote, branch) == before, "the runner pushed on a renewal that came back too late"
    wip = remote_sha(remote, f"kiro-wip/{task_id}")
    assert wip and "Lease task" in git.Repo(remote).git.show(f"{wip}:fake_agent_output.txt")
    row = store.get_row(task_id)
    assert row["status"] == "processing" and row["runnerId"] == "slow" and "commitSha" not in row
    assert row["wipSha"] == wip and row["wipRef"] == f"kiro-wip/{task_id}"
    assert len(agent_starts(agent_log, branch)) == 1
    assert not list((tmp_path / "slow" / "wt").iterdir())  # the work is on the remote: worktree gone


def test_a_push_that_outlasts_its_lease_is_stopped_and_the_work_kept(
    ddb: Any, deployed: Any, remote: Path, tmp_path: Path, agent_log: Path
) -> None:
    """The push may take only what remains of the lease its proof established: a remote that stalls
    the push longer is cut off inside that lease, and the work goes to kiro-wip/<id> instead."""
    # given: a 3 s lease and a remote that holds pushes to the task's branch for 20 s
    lease = 3.0
    arrivals = tmp_path / "arrivals.log"
    stall_branch_pushes(remote, 20, arrivals)
    store = TaskStore(ddb, deployed.table_name, branch_locks_table=deployed.branch_locks_table)
    pipeline = make_pipeline(store, tmp_path, remote, "stalled", lease_seconds=lease)
    task_id = new_task(store, "[fake:sleep=0.2]")
    branch = f"feature/{task_id}"
    # when
    outcome = pipeline.process(task_id)
    # then: the branch push was stopped; the WIP push came less than a lease after it arrived
    assert outcome is Outcome.LEASE_LOST
    assert remote_sha(remote, branch) == ""
    wip = remote_sha(remote, f"kiro-wip/{task_id}")
    assert wip and "Lease task" in git.Repo(remote).git.show(f"{wip}:fake_agent_output.txt")
    pushes = [line.split(" ", 1) for line in arrivals.read_text().splitlines()]
    assert [f"refs/heads/{branch}" in refs for _, refs in pushes] == [True, False]
    assert float(pushes[1][0]) - float(pushes[0][0]) < lease, pushes
    row = store.get_row(task_id)
    assert row["status"] == "processing" and row["wipSha"] == wip and "commitSha" not in row


class RecordingWatchers:
    """A run's watchers that keep what they were told (the runner's terminal service stands here)."""

    def __init__(self) -> None:
        self.output: list[str] = []
        self.events: list[tuple[str, Any]] = []

    def start_run(self, task_id: str, branch: str) -> None:
        self.events.append(("start", task_id))

    def run_output(self, task_id: str, text: str) -> None:
        self.output.append(text)

    def end_run(self, task_id: str, end: Any) -> None:
        self.events.append(("end", end))


def test_the_log_tail_is_refreshed_while_the_task_runs_and_never_written_once_the_row_is_taken_over(
    ddb: Any, deployed: Any, remote: Path, tmp_path: Path, agent_log: Path
) -> None:
    """A 60 s lease: the heartbeat beats every 20 s, so the log tail writes alone meet the takeover;
    each is a conditional write through the claim, refused once the row is someone else's."""
    # given: an agent that prints a step every 0.25 s for 5 s, its tail written every 0.2 s at most
    lock_table = deployed.branch_locks_table
    store = TaskStore(ddb, deployed.table_name, branch_locks_table=lock_table)
    pipeline = make_pipeline(store, tmp_path, remote, "first", lease_seconds=60)
    pipeline.options.log_tail_seconds = 0.2
    watchers = RecordingWatchers()
    pipeline.watchers = watchers
    task_id = new_task(store, "[fake:sleep=5]")
    outcome: list[Outcome] = []
    worker = threading.Thread(target=lambda: outcome.append(pipeline.process(task_id)))
    worker.start()
    refreshed = wait_until(
        lambda: "working... step" in ((row := store.get_row(task_id)).get("logTail") or "") and row,
        30,
        what="the log tail to show the run's progress",
    )
    assert refreshed["status"] == "processing" and refreshed["runnerId"] == "first"
    # when: another runner takes the row over and writes its own tail
    intruder = TaskStore(
        ddb, deployed.table_name, clock=lambda: time.time() + 600, branch_locks_table=lock_table
    )
    claim = intruder.claim(task_id, "intruder", 600)
    claim.progress("the intruder's own output")
    seen_at_takeover = len(watchers.output)
    worker.join(timeout=60)
    # then: the first runner's agent went on printing, and none of it reached the row
    assert outcome == [Outcome.LEASE_LOST]
    assert len(watchers.output) > seen_at_takeover + 2, "the agent printed nothing after the takeover"
    row = store.get_row(task_id)
    assert row["logTail"] == "the intruder's own output" and row["runnerId"] == "intruder"
    # and the watchers heard the run start, then end as lost (the row is not this runner's to report)
    assert watchers.events[0] == ("start", task_id) and watchers.events[-1][1].status == "lost"
