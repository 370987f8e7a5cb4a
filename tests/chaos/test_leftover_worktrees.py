"""A runner killed with SIGKILL mid-task leaves its worktrees behind: the next runner on that home
removes the ones that hold nothing unique as it starts, and never deletes work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ec2_runner.gitops import safe_dir_name
from tests.chaos.conftest import Chaos, summary
from tests.fixtures import unique, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


def started_lines(chaos: Chaos) -> int:
    return sum(1 for ln in chaos.runner_lines() if str(ln.get("message", "")).startswith("runner started"))


def test_the_next_runner_removes_a_killed_runners_clean_worktree_and_keeps_the_one_with_work(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: a runner at work on two tasks, one that changed nothing yet and one with a file written
    # (a 10 s lease: the tasks come back to a runner no sooner than ~8 s after its death; one runner
    # lives at a time, so a 2 s visibility margin past the lease is enough)
    chaos: Chaos = chaos_factory(
        "leftover",
        runner_env={"LEASE_SECONDS": "10", "RUNNER_SLOTS": "2", "VISIBILITY_MARGIN_SECONDS": "2"},
    )
    chaos.start_runner(0)
    clean, dirty = unique("clean"), unique("dirty")
    chaos.put(clean, f"feature/{clean}", details="[fake:sleep=6]")
    chaos.put(dirty, f"feature/{dirty}", details="[fake:checkpoint=6]")
    worktrees = Path(chaos.stack.runner_env(0)["WORKTREES_DIR"])
    clean_dir, dirty_dir = (worktrees / safe_dir_name(f"task-{t}") for t in (clean, dirty))
    wait_until(
        lambda: (
            {r.task_id for r in chaos.agent_runs([clean, dirty])} == {clean, dirty}
            and (dirty_dir / "checkpoint.txt").exists()
        ),
        30,
        what="both agents at work",
    )
    # when: the runner is killed, and started again on the same home
    chaos.kill9(0)
    assert clean_dir.is_dir() and dirty_dir.is_dir()  # what a SIGKILL leaves behind
    chaos.start_runner(0)
    wait_until(lambda: started_lines(chaos) == 2, 30, what="the next runner to start")
    # then: as it starts (long before the tasks come back to it), the clean worktree is gone and the
    # one with work is where it was, untouched
    gone_at_start = not clean_dir.exists()
    kept_at_start = (dirty_dir / "checkpoint.txt").is_file()
    rows = chaos.wait_final([clean, dirty], timeout=60)
    leftover = [p for p in (worktrees / ".leftover").glob(f"{dirty_dir.name}-*") if p.is_dir()]
    line = summary(
        capsys,
        "leftover worktrees after kill -9",
        clean_removed_at_start=gone_at_start,
        work_kept_at_start=kept_at_start,
        leftover=len(leftover),
        duration=chaos.elapsed(),
    )
    assert gone_at_start, f"{line}: {sorted(p.name for p in worktrees.iterdir())}"
    assert kept_at_start, line
    # and: both tasks ran again and completed; the rerun of the task with work moved its old folder
    # to .leftover (work is never deleted), and no worktree but that one is left
    assert [rows[t]["status"] for t in (clean, dirty)] == ["complete", "complete"], f"{line}; {rows}"
    assert len(leftover) == 1 and "started by pid" in (leftover[0] / "checkpoint.txt").read_text(), line
    # (a worktree is removed once its row is written: on a loaded machine a moment after the row ends)
    wait_until(
        lambda: sorted(p.name for p in worktrees.iterdir()) == [".leftover"],
        30,
        what=f"{line}: only .leftover in {worktrees}",
    )
    assert not list((worktrees / ".leftover").glob(f"{clean_dir.name}*")), line
