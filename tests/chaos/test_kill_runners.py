"""Runners killed with SIGKILL again and again while they work: no task lost, none run twice at once,
every complete task's commit on its branch exactly once."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from tests.chaos.conftest import Chaos, summary
from tests.fixtures import unique

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

RUNNERS = 3
TASKS = 30
KILLS = 10


def claims(chaos: Chaos) -> dict[str, list[tuple[str, int]]]:
    """(runnerId, attempt) of every claim the runners logged, per task."""
    found: dict[str, list[tuple[str, int]]] = {}
    for line in chaos.runner_lines():
        msg = str(line.get("message", ""))
        if msg.startswith("claimed (attempt ") and line.get("task_id"):
            attempt = int(msg.removeprefix("claimed (attempt ").rstrip(")"))
            found.setdefault(line["task_id"], []).append((line.get("runner_id"), attempt))
    return found


def test_runners_killed_ten_times_lose_nothing_and_never_double_own_a_task(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 runners, 30 tasks of 0.5-2 s, a random runner SIGKILLed and restarted 10 times."""
    # given
    rng = random.Random(1234)
    chaos: Chaos = chaos_factory("kill9")
    for index in range(RUNNERS):
        chaos.start_runner(index)
    ids = [unique("k9") for _ in range(TASKS)]
    branches = {task_id: f"feature/{task_id}" for task_id in ids}
    for task_id in ids:
        chaos.put(task_id, branches[task_id], details=f"[fake:sleep={rng.uniform(0.5, 2):.2f}]")

    # when: kill a random runner every ~1.5 s while any task is unfinished, restart it at once
    time.sleep(2.0)  # let the runners import and pick up work
    while len(chaos.kills) < KILLS:
        index = rng.randrange(RUNNERS)
        chaos.kill9(index)
        chaos.start_runner(index)
        time.sleep(rng.uniform(1.0, 2.0))
    rows = chaos.wait_final(ids, timeout=150)

    # then
    statuses = Counter(row["status"] for row in rows.values())
    processing = [t for t in ids if chaos.store.get_row(t)["status"] not in ("complete", "failed")]
    double = chaos.double_owned(ids)
    history = claims(chaos)
    repeated_claims = [t for t, c in history.items() if len({a for _, a in c}) != len(c)]
    not_once = {
        t: n for t in ids if rows[t]["status"] == "complete" and (n := chaos.commits_for(branches[t], t)) != 1
    }
    orphans = chaos.live_agent_pids(ids)
    lost = chaos.lost(ids)
    pushes, pushed_not_owner = chaos.ownership(ids)
    reclaims = sum(1 for r in rows.values() if r.get("attempts", 1) > 1)
    line = summary(
        capsys,
        "kill-9 runners",
        tasks=TASKS,
        kills=len(chaos.kills),
        complete=statuses["complete"],
        failed=statuses["failed"],
        lost=len(lost),
        double_owned=len(set(double) | set(pushed_not_owner)),
        reclaims=reclaims,
        pushes=pushes,
        duration=chaos.elapsed(),
    )
    assert not processing and not lost, f"{line}; lost: {lost}"
    # the kills hit work in flight: some tasks were taken over from a dead runner
    assert reclaims > 0, line
    # the checks below read real evidence: every task's agent runs and claims were logged
    assert {r.task_id for r in chaos.agent_runs(ids)} == set(ids), line
    assert set(history) == set(ids), line
    assert all(max(a for _, a in history[t]) == rows[t]["attempts"] for t in ids), line
    assert not double, f"{line}; overlapping agent runs: {double}"
    # the push window too: no runner pushed a task after another runner had claimed it since its own
    # claim (a runner killed between its push and the log line leaves one push unlogged)
    assert pushes >= statuses["complete"] - len(chaos.kills), line
    assert not pushed_not_owner, f"{line}; pushed while another runner owned the task: {pushed_not_owner}"
    assert not repeated_claims, f"{line}; one attempt number claimed twice: {repeated_claims}"
    assert not not_once, f"{line}; commits per task on its branch: {not_once}"
    assert not orphans, f"{line}; agent processes left behind: {orphans}"
    failed = {t: r.get("error") for t, r in rows.items() if r["status"] == "failed"}
    assert not failed, f"{line}; failed: {failed}"
    for task_id, row in rows.items():
        assert chaos.remote().git.rev_parse(f"refs/heads/{branches[task_id]}") == row["commitSha"], line
