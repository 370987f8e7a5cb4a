"""The chaos suite's overlap check (``Chaos.double_owned``) on written logs: a run its runner stopped
(lease lost) ends where the runner says it finished, a run killed with its runner ends at the kill,
and a run nothing ended still overlaps the task's next run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from ec2_runner.gitops import safe_dir_name
from tests.chaos.conftest import Chaos

T0 = 1_800_000_000.0


def stamp(seconds: float) -> str:
    """Powertools' timestamp for ``T0 + seconds``."""
    at = dt.datetime.fromtimestamp(T0 + seconds, tz=dt.UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S,") + f"{at.microsecond // 1000:03d}+0000"


def chaos_with(tmp_path: Path, agent: list[dict[str, Any]], runner: list[dict[str, Any]]) -> Chaos:
    logs = tmp_path / "logs"
    logs.mkdir()
    agent_log = tmp_path / "fake-agent.log"
    folder = str(tmp_path / "worktrees" / safe_dir_name("task-t1"))
    agent_log.write_text("".join(json.dumps({"cwd": folder, **e}) + "\n" for e in agent))
    (logs / "runner-0.log").write_text("".join(json.dumps(line) + "\n" for line in runner))
    return Chaos(stack=None, store=None, sqs=None, agent_log=agent_log, logs=logs)  # type: ignore[arg-type]


# the task's first run (runner pid 1) logged no end of its own; its rerun (runner pid 2) ended at 10 s
RERUN = [
    {"event": "start", "pid": 10, "ppid": 1, "time": T0 + 1},
    {"event": "start", "pid": 11, "ppid": 2, "time": T0 + 9},
    {"event": "end", "pid": 11, "time": T0 + 10},
]


def finished(seconds: float) -> dict[str, Any]:
    return {
        "message": "agent finished in 1.0 s (exit None, ok False)",
        "task_id": "t1",
        "timestamp": stamp(seconds),
    }


def test_a_run_its_runner_stopped_ends_where_the_runner_says_it_finished(tmp_path: Path) -> None:
    chaos = chaos_with(
        tmp_path,
        RERUN,
        [finished(2), finished(10)],
    )
    assert chaos.double_owned(["t1"]) == []


def test_a_run_killed_with_its_runner_ends_at_the_kill(tmp_path: Path) -> None:
    chaos = chaos_with(
        tmp_path,
        RERUN,
        [finished(10)],
    )
    assert chaos.double_owned(["t1"]) == ["t1"]  # nothing says the first run ended before the second
    chaos.kills.append((T0 + 3, 1))
    assert chaos.double_owned(["t1"]) == []


def test_a_run_nothing_ended_overlaps_the_next_one(tmp_path: Path) -> None:
    # the only "agent finished" is the second run's: the first one was still going then
    chaos = chaos_with(
        tmp_path,
        [
            {"event": "start", "pid": 10, "ppid": 1, "time": T0 + 1},
            {"event": "start", "pid": 11, "ppid": 2, "time": T0 + 9},
        ],
        [finished(10)],
    )
    assert chaos.double_owned(["t1"]) == ["t1"]


def test_runs_that_overlap_by_their_own_ends_are_double_owned(tmp_path: Path) -> None:
    chaos = chaos_with(
        tmp_path,
        [
            {"event": "start", "pid": 10, "ppid": 1, "time": T0 + 1},
            {"event": "start", "pid": 11, "ppid": 2, "time": T0 + 2},
            {"event": "end", "pid": 10, "time": T0 + 3},
            {"event": "end", "pid": 11, "time": T0 + 4},
        ],
        [finished(3), finished(4)],
    )
    assert chaos.double_owned(["t1"]) == ["t1"]
