"""A runner that dies after its push landed but before it wrote the status: the next attempt
finds the pushed commit and completes with it, instead of running the agent and pushing twice."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from tests.chaos.conftest import Chaos, summary
from tests.fixtures import unique

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

# post-receive runs after the remote updated its refs: the push has landed. It then SIGKILLs the
# runner that pushed (the first ancestor running ec2_runner), once, for branches named crash/*.
KILL_PUSHER_HOOK = r"""#!/bin/sh
while read old new ref; do
  case "$ref" in refs/heads/crash/*) ;; *) continue ;; esac
  flag="$GIT_DIR/killed-$(echo "$ref" | tr / _)"
  [ -e "$flag" ] && continue
  touch "$flag"
  pid=$PPID
  while [ "$pid" -gt 1 ]; do
    if tr '\0' ' ' < /proc/$pid/cmdline | grep -q 'ec2_runner'; then kill -9 "$pid"; break; fi
    pid=$(awk '{print $4}' /proc/$pid/stat)
  done
done
"""


def test_runner_killed_right_after_its_push_lands_does_not_push_twice(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: a remote whose post-receive hook kills the pushing runner
    # (one runner lives at a time: the dead one's message may come back 2 s after its 3 s lease)
    chaos: Chaos = chaos_factory("crashpush", runner_env={"VISIBILITY_MARGIN_SECONDS": "2"})
    hook = chaos.remote().common_dir + "/hooks/post-receive"
    with open(hook, "w") as f:
        f.write(KILL_PUSHER_HOOK)
    import os

    os.chmod(hook, os.stat(hook).st_mode | stat.S_IXUSR)
    first = chaos.start_runner(0)
    task_id = unique("cp")
    branch = f"crash/{task_id}"
    # when
    chaos.put(task_id, branch, details="[fake:sleep=0.2]")
    first.wait(timeout=30)  # killed by the hook
    chaos.kills.append((0.0, first.pid))
    chaos.start_runner(1)
    row = chaos.wait_final([task_id], timeout=60)[task_id]
    # then
    starts = chaos.agent_runs([task_id])
    commits = chaos.commits_for(branch, task_id)
    lost = chaos.lost([task_id])
    line = summary(
        capsys,
        "crash after push",
        tasks=1,
        kills=1,
        lost=len(lost),
        double_owned=len(chaos.double_owned([task_id])),
        agent_runs=len(starts),
        commits=commits,
        attempts=row.get("attempts"),
        duration=chaos.elapsed(),
    )
    assert first.returncode == -9, line
    assert not lost and not chaos.double_owned([task_id]), line
    assert row["status"] == "complete", f"{line}; {row.get('error')}"
    assert row["attempts"] == 2, line
    assert commits == 1, line
    assert len(starts) == 1, line
    assert chaos.remote().git.rev_parse(f"refs/heads/{branch}") == row["commitSha"], line
