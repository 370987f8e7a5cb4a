"""One fault at a time against real runner processes: a hung agent, SIGTERM mid-task, someone pushing
to the PR branch during the task, two tasks for one branch."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import git
import pytest

from ec2_runner.gitops import safe_dir_name
from tests.chaos.conftest import Chaos, children_of, env_pids_of, summary
from tests.fixtures import unique, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


def agent_started(chaos: Chaos, task_id: str, timeout: float = 30) -> int:
    """Wait for the fake agent's start line for ``task_id``; its pid."""
    runs = wait_until(lambda: chaos.agent_runs([task_id]), timeout, what=f"the agent of {task_id} to start")
    return runs[0].pid


def push_to_remote(chaos: Chaos, branch: str, path: str, text: str, base: str = "main") -> str:
    """What a person does on GitHub: commit ``path`` on ``branch`` (from ``base`` when new) and push."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = git.Repo.clone_from(chaos.stack.config.git_remote, tmp)  # type: ignore[union-attr]
        with repo.config_writer() as cw:
            cw.set_value("user", "name", "A Reviewer")
            cw.set_value("user", "email", "reviewer@example.invalid")
        remote_branches = [r.remote_head for r in repo.remote().refs]
        repo.git.checkout("-B", branch, f"origin/{branch if branch in remote_branches else base}")
        (Path(tmp) / path).write_text(text)
        repo.git.add(path)
        repo.git.commit("-m", f"reviewer edits {path}")
        repo.git.push("origin", f"HEAD:refs/heads/{branch}")
        return repo.head.commit.hexsha


def released_message_visible(chaos: Chaos, task_id: str, timeout: float = 5) -> bool:
    """Whether a message for ``task_id`` that was received before is in the queue, visible; the
    messages looked at stay visible (received with a zero visibility timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = chaos.sqs.receive_message(
            QueueUrl=chaos.stack.config.task_queue_url,  # type: ignore[union-attr]
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        for message in got.get("Messages", []):
            if json.loads(message["Body"]).get("taskId") == task_id:
                # this receive counts too: the runner's receive makes it 2 or more
                if int(message["Attributes"]["ApproximateReceiveCount"]) >= 2:
                    return True
    return False


def test_hung_agent_is_killed_at_the_timeout_and_its_slot_serves_the_next_task(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: one runner, one slot, a 2 s agent timeout
    chaos: Chaos = chaos_factory("hang", runner_env={"AGENT_TIMEOUT": "2", "RUNNER_SLOTS": "1"})
    runner = chaos.start_runner(0)
    hung, after = unique("hang"), unique("after")
    # when
    chaos.put(hung, f"feature/{hung}", details="[fake:hang]")
    chaos.put(after, f"feature/{after}", details="[fake:sleep=0.2]")
    rows = chaos.wait_final([hung, after], timeout=60)
    # then
    time.sleep(0.5)
    leftovers = chaos.live_agent_pids([hung]) + env_pids_of(safe_dir_name(f"task-{hung}"))
    runs = chaos.agent_runs([hung])
    lost = chaos.lost([hung, after])
    double = chaos.double_owned([hung, after])
    line = summary(
        capsys,
        "hung agent",
        tasks=2,
        kills=0,
        lost=len(lost),
        double_owned=len(double),
        orphans=len(leftovers),
        duration=chaos.elapsed(),
    )
    assert not lost and not double, line
    assert rows[hung]["status"] == "failed" and "timed out" in rows[hung]["error"], f"{line}; {rows[hung]}"
    assert rows[after]["status"] == "complete", f"{line}; {rows[after].get('error')}"
    assert rows[after]["runnerId"] == rows[hung]["runnerId"], line  # the one slot was freed
    assert runs and runs[0].helper_pids, line  # the hang started its helper: both must be gone
    assert not leftovers, f"{line}; orphaned agent processes: {leftovers}"
    assert runner.poll() is None and not [
        p for p in children_of(runner.pid) if p in {runs[0].pid, *runs[0].helper_pids}
    ], line


def test_sigterm_mid_task_gives_the_task_back_with_its_work_and_the_next_runner_resumes_it(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: a runner with a 1 s grace period working on a long task that checkpoints its work
    chaos: Chaos = chaos_factory("sigterm", runner_env={"SHUTDOWN_GRACE_SECONDS": "1", "LEASE_SECONDS": "10"})
    first = chaos.start_runner(0)
    task_id = unique("term")
    chaos.put(task_id, f"feature/{task_id}", details="[fake:checkpoint=60]")
    agent_pid = agent_started(chaos, task_id)
    time.sleep(0.5)  # the checkpoint is written before the long part
    # when
    first.send_signal(signal.SIGTERM)
    chaos.wait_exit(0)
    # then: pending again with a note, WIP on kiro-wip/<id>, message visible, no agent left
    row = chaos.store.get_row(task_id)
    # the message the runner had received is visible again: a signal of this task received before
    # (the stream's own signal for the row going back to pending is a fresh message, received once)
    re_received = released_message_visible(chaos, task_id)
    wip = chaos.remote().git.for_each_ref("--format=%(objectname)", f"refs/heads/kiro-wip/{task_id}").strip()
    agent_alive = chaos.live_agent_pids([task_id])
    released = dict(row)
    # and another runner finishes it from the WIP
    chaos.start_runner(1)
    final = chaos.wait_final([task_id], timeout=60)[task_id]
    parent = chaos.remote().git.rev_parse(f"{final.get('commitSha')}^") if final.get("commitSha") else None
    content = (
        chaos.remote().git.show(f"{final['commitSha']}:checkpoint.txt") if final.get("commitSha") else ""
    )
    line = summary(
        capsys,
        "sigterm mid-task",
        tasks=1,
        kills=0,
        lost=len(chaos.lost([task_id])),
        double_owned=len(chaos.double_owned([task_id])),
        exit_code=first.returncode,
        attempts=final.get("attempts"),
        duration=chaos.elapsed(),
    )
    assert first.returncode == 0, line
    assert released["status"] == "pending" and "shutting down" in (released.get("error") or ""), (
        f"{line}; {released}"
    )
    assert wip and released.get("wipSha") == wip, f"{line}; wip ref {wip!r}, row {released.get('wipSha')}"
    assert re_received, f"{line}: the released message was not made visible again"
    assert not chaos.lost([task_id]) and not chaos.double_owned([task_id]), line
    assert not agent_alive and agent_pid not in agent_alive, f"{line}; agent left running: {agent_alive}"
    assert final["status"] == "complete", f"{line}; {final.get('error')}"
    assert final["attempts"] == 2, line
    # the second attempt started from the WIP (its work is in the result) and the branch gets one
    # commit for the task: the WIP folded into it, on the branch's own base
    assert "started by" in content and "finished by" in content, line
    assert parent == chaos.remote().git.rev_parse(f"{wip}^"), (
        f"{line}: the WIP must be squashed into one commit"
    )
    branch_log = chaos.remote().git.log("--format=%H", f"{parent}..{final['commitSha']}").split()
    assert branch_log == [final["commitSha"]], line


def test_push_conflict_fails_keeping_the_work_and_a_clean_move_is_rebased(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: two PR branches that exist on the remote, and a runner
    chaos: Chaos = chaos_factory("conflict", runner_env={"LEASE_SECONDS": "10"})
    clash, clean = unique("clash"), unique("clean")
    base = {t: push_to_remote(chaos, f"feature/{t}", "shared.txt", "base\n") for t in (clash, clean)}
    chaos.start_runner(0)
    # when: each task's agent works 2 s; meanwhile a reviewer pushes to its branch
    chaos.put(clash, f"feature/{clash}", details='[fake:sleep=2] [fake:write path=shared.txt text="ours"]')
    chaos.put(clean, f"feature/{clean}", details='[fake:sleep=2] [fake:write path=mine.txt text="ours"]')
    agent_started(chaos, clash)
    agent_started(chaos, clean)
    theirs = {
        clash: push_to_remote(chaos, f"feature/{clash}", "shared.txt", "theirs\n"),
        clean: push_to_remote(chaos, f"feature/{clean}", "reviewer.txt", "theirs\n"),
    }
    rows = chaos.wait_final([clash, clean], timeout=60)
    # then
    remote = chaos.remote()
    wip = remote.git.for_each_ref("--format=%(objectname)", f"refs/heads/kiro-wip/{clash}").strip()
    lost = chaos.lost([clash, clean])
    double = chaos.double_owned([clash, clean])
    line = summary(
        capsys,
        "push conflict",
        tasks=2,
        kills=0,
        lost=len(lost),
        double_owned=len(double),
        conflict=rows[clash]["status"],
        clean_move=rows[clean]["status"],
        duration=chaos.elapsed(),
    )
    assert not lost and not double, line
    assert rows[clash]["status"] == "failed", f"{line}; {rows[clash]}"
    assert "conflicts" in rows[clash]["error"] and f"kiro-wip/{clash}" in rows[clash]["error"], line
    assert remote.git.rev_parse(f"refs/heads/feature/{clash}") == theirs[clash], line  # theirs stays
    assert wip and remote.git.show(f"{wip}:shared.txt").strip() == "ours", line  # ours is kept
    assert rows[clash].get("wipSha") == wip, line
    assert rows[clean]["status"] == "complete", f"{line}; {rows[clean].get('error')}"
    sha = rows[clean]["commitSha"]
    assert remote.git.rev_parse(f"refs/heads/feature/{clean}") == sha, line
    assert remote.git.rev_parse(f"{sha}^") == theirs[clean], line  # rebased onto the reviewer's push
    assert remote.git.show(f"{sha}:mine.txt").strip() == "ours", line
    assert remote.git.show(f"{sha}:reviewer.txt").strip() == "theirs", line
    assert base[clean] != theirs[clean]


def test_two_tasks_for_one_branch_never_run_at_once_and_both_land(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: two runners with two slots each, so nothing but the branch rule keeps the tasks apart;
    # the rule is the branch lock (the stack gives the runners its table)
    chaos: Chaos = chaos_factory("onebranch", runner_env={"LEASE_SECONDS": "10"})
    assert chaos.stack.config and chaos.stack.config.env.get("BRANCH_LOCKS_TABLE")
    chaos.start_runner(0)
    chaos.start_runner(1)
    time.sleep(1.5)  # both runners long-polling
    branch = f"feature/{unique('shared')}"
    ids = [unique("b1"), unique("b2")]
    # when: inserted together
    for task_id in ids:
        chaos.put(task_id, branch, details="[fake:sleep=1.5]")
    rows = chaos.wait_final(ids, timeout=60)
    # then
    runs = sorted(chaos.agent_runs(ids), key=lambda r: r.start)
    overlap = any(b.start < (a.end or float("inf")) for a, b in zip(runs, runs[1:], strict=False))
    line = summary(
        capsys,
        "one task per branch",
        tasks=2,
        kills=0,
        lost=len(chaos.lost(ids)),
        double_owned=len(chaos.double_owned(ids)),
        overlapping_runs=int(overlap),
        duration=chaos.elapsed(),
    )
    assert [rows[t]["status"] for t in ids] == ["complete", "complete"], f"{line}; {rows}"
    assert len(runs) == 2 and not overlap, f"{line}; {[(r.task_id, r.start, r.end) for r in runs]}"
    assert all(chaos.commits_for(branch, t) == 1 for t in ids), line
    head = chaos.remote().git.rev_parse(f"refs/heads/{branch}")
    assert head == max(rows.values(), key=lambda r: r["finishedAt"])["commitSha"], line
    # the second run started after the first ended, and the first task's end is what started it
    assert runs[0].end is not None and runs[1].start >= runs[0].end, line
    woke = [ln for ln in chaos.runner_lines() if str(ln.get("message")).startswith("woke task ")]
    assert [ln.get("task_id") for ln in woke] == [runs[0].task_id], json.dumps(woke)[:500]
    assert runs[1].task_id in str(woke[0].get("message")), json.dumps(woke)[:500]
    # the second task was refused by the first one's lock, and no lock outlives the tasks
    waited = [
        ln for ln in chaos.runner_lines() if f"is locked by task {runs[0].task_id}" in str(ln.get("message"))
    ]
    assert waited and {ln.get("task_id") for ln in waited} == {runs[1].task_id}, json.dumps(waited)[:500]
    assert chaos.branch_lock(branch) == {}, line
