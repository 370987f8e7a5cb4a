"""Process reaping: an agent and everything it started end with its run, or with the runner.

A pty child calls ``setsid()``, so it leads its own session and process group; stopping the group
(not only the leader) also stops the helpers an agent forks, which may ignore SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect

logger = logging.getLogger(__name__)


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in the group. A container's PID 1 may never reap
    orphans, so a zombie counts as gone."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def run_to_end(
    argv: list[str], *, cwd: str | Path, env: dict[str, str], timeout: float | None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with no input and its output captured, in a session of its own: at ``timeout``
    its whole process group (and whatever it started: ssh, credential helpers) is killed, then
    ``subprocess.TimeoutExpired`` is raised."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group; a group already gone is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def die_with_parent() -> None:
    """In the agent's child process: be killed if the runner dies (even by SIGKILL), so a crashed
    runner never leaves an agent working on a task that another runner is about to reclaim."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def kill_process_group(child: pexpect.spawn, grace: float) -> None:
    """Stop the agent and everything it started: SIGTERM to its process group, SIGKILL after the grace."""
    pgid = child.pid  # the pty child calls setsid(): it leads its own session and process group
    signal_group(pgid, signal.SIGTERM)
    signal_group(pgid, signal.SIGCONT)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        child.isalive()  # reaps the leader once it exits
        if not group_alive(pgid):
            break
        time.sleep(0.02)
    else:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            # again on every pass: a process the group forked while the last signal went out
            # would otherwise outlive it (seen as an orphaned agent helper under load)
            signal_group(pgid, signal.SIGKILL)
            child.isalive()
            if not group_alive(pgid):
                break
            time.sleep(0.02)
        else:
            logger.warning("agent process group %s still alive after SIGKILL", pgid)
