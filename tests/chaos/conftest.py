"""Fixtures for the chaos suite: a local stack per scenario, runner processes with their own log
files, the fake agent's log, and the checks every scenario shares (no overlap, no orphans)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git
import pytest

from ec2_runner.gitops import safe_dir_name
from local.stack import LocalStack
from shared import aws
from shared.models import from_dynamodb
from shared.store import TaskStore
from tests.fixtures import FAKE_AGENT_COMMAND, unique, wait_until

FINAL = ("complete", "failed")


def proc_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] not in ("Z", "X"):
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


@dataclass
class AgentRun:
    """One run of the fake agent, from its start/end lines (end is None when it was killed)."""

    task_id: str
    pid: int
    ppid: int
    start: float
    end: float | None = None
    helper_pids: list[int] = field(default_factory=list)


@dataclass
class Chaos:
    """One scenario's stack, its runners and what they left behind."""

    stack: LocalStack
    store: TaskStore
    sqs: Any
    agent_log: Path
    logs: Path
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)  # runner index -> process
    kills: list[tuple[float, int]] = field(default_factory=list)  # (time, pid) of every SIGKILL
    exits: list[tuple[float, int]] = field(default_factory=list)  # (time, pid) of runners seen gone
    started: float = field(default_factory=time.monotonic)

    # -- runners ----------------------------------------------------------------------------
    def start_runner(self, index: int, **env: str) -> subprocess.Popen:
        proc = self.stack.start_runner(
            {k: str(v) for k, v in env.items()}, log_path=self.logs / f"runner-{index}.log", index=index
        )
        self.procs[index] = proc
        return proc

    def kill9(self, index: int) -> int:
        proc = self.procs[index]
        pid = proc.pid
        proc.send_signal(signal.SIGKILL)
        self.kills.append((time.time(), pid))
        proc.wait(timeout=10)
        return pid

    def wait_exit(self, index: int, timeout: float = 30) -> int:
        """Wait for runner ``index`` to end by itself; its exit code. Its agents ended by then."""
        proc = self.procs[index]
        code = proc.wait(timeout=timeout)
        self.exits.append((time.time(), proc.pid))
        return code

    def runner_lines(self) -> list[dict]:
        lines = []
        for path in sorted(self.logs.glob("runner-*.log")):
            for raw in path.read_text(errors="replace").splitlines():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    lines.append({"message": raw, "raw": True})
        return lines

    # -- tasks ------------------------------------------------------------------------------
    def put(self, task_id: str, branch: str, details: str = "", title: str = "Chaos task") -> None:
        self.store.put_new(
            {
                "id": task_id,
                "title": title,
                "details": details,
                "branch": branch,
                "prNumber": 7,
                "prUrl": "https://github.com/example/aipm/pull/7",
            }
        )

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, dict]:
        rows: dict[str, dict] = {}

        def all_final() -> bool:
            for task_id in ids:
                if task_id not in rows:
                    row = self.store.get_row(task_id)
                    if row.get("status") in FINAL:
                        rows[task_id] = row
            return len(rows) == len(ids)

        try:
            wait_until(all_final, timeout, interval=0.25, what=f"{len(ids)} tasks to end")
        except AssertionError as e:
            stuck = {t: self.store.get_row(t).get("status") for t in ids if t not in rows}
            raise AssertionError(f"{e}; not final: {stuck}") from None
        return rows

    # -- what happened ----------------------------------------------------------------------
    def agent_runs(self, ids: list[str]) -> list[AgentRun]:
        """The fake agent's runs of ``ids``, matched by the worktree folder each ran in."""
        by_dir = {safe_dir_name(f"task-{t}"): t for t in ids}
        runs: dict[int, AgentRun] = {}
        if not self.agent_log.exists():
            return []
        for raw in self.agent_log.read_text().splitlines():
            event = json.loads(raw)
            task_id = by_dir.get(Path(event.get("cwd", "")).name)
            if task_id is None:
                continue
            pid = event["pid"]
            if event["event"] == "start":
                runs[pid] = AgentRun(task_id, pid, event.get("ppid", 0), event["time"])
            elif event["event"] == "end" and pid in runs:
                runs[pid].end = event["time"]
            elif event["event"] == "hang" and pid in runs:
                runs[pid].helper_pids.append(event["helper_pid"])
        return list(runs.values())

    def double_owned(self, ids: list[str]) -> list[str]:
        """Tasks whose agent runs overlapped in time. A run that logged no end of its own was killed:
        it died with its runner (PR_SET_PDEATHSIG) at that runner's SIGKILL or exit, or its runner
        stopped it (its lease lost, a cancel) and logged ``agent finished`` for the task once the
        agent's process group was gone; with none of these it counts as running forever. (Were two
        runs to overlap, the first one's end so found is at the earliest the second's own end, after
        that one's start: the overlap is still seen.)"""
        killed_at = {pid: t for t, pid in self.kills + self.exits}
        finished: dict[str, list[float]] = {}
        for line in self.runner_lines():
            if str(line.get("message", "")).startswith("agent finished in ") and line.get("task_id"):
                finished.setdefault(line["task_id"], []).append(log_time(line))
        per_task: dict[str, list[tuple[float, float]]] = {}
        for run in self.agent_runs(ids):
            end = run.end
            if end is None:
                stopped = [t for t in finished.get(run.task_id, []) if t >= run.start]
                end = min([killed_at.get(run.ppid, float("inf")), *stopped])
            per_task.setdefault(run.task_id, []).append((run.start, end))
        bad = []
        for task_id, spans in per_task.items():
            spans.sort()
            if any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)):
                bad.append(task_id)
        return bad

    def lost(self, ids: list[str]) -> list[str]:
        """Tasks whose outcome is gone, read afresh: the row is not final, or it is complete with a
        commit that is not on its branch on the remote."""
        gone = []
        for task_id in ids:
            row = self.store.get_row(task_id)
            if row.get("status") not in FINAL:
                gone.append(task_id)
            elif row["status"] == "complete" and not self.on_branch(row.get("commitSha"), row["branch"]):
                gone.append(task_id)
        return gone

    def on_branch(self, sha: str | None, branch: str) -> bool:
        if not sha:
            return False
        try:
            self.remote().git.merge_base("--is-ancestor", sha, f"refs/heads/{branch}")
            return True
        except git.GitCommandError:
            return False

    def ownership(self, ids: list[str]) -> tuple[int, list[str]]:
        """Claims and pushes from the runners' logs: (pushes seen, tasks pushed by a runner while
        another claim of the task had been made since that runner's own claim, i.e. while the
        row was someone else's). Covers the push window, which the agent's runs do not."""
        wanted = set(ids)
        events: dict[str, list[tuple[float, str, str]]] = {}  # task -> (time, kind, runner)
        for line in self.runner_lines():
            task_id, msg = line.get("task_id"), str(line.get("message", ""))
            if task_id not in wanted:
                continue
            if msg.startswith("claimed (attempt "):
                events.setdefault(task_id, []).append((log_time(line), "claim", str(line.get("runner_id"))))
            elif msg.startswith("pushed "):
                events.setdefault(task_id, []).append((log_time(line), "push", str(line.get("runner_id"))))
        pushes, bad = 0, []
        for task_id, seen in events.items():
            seen.sort(key=lambda e: (e[0], e[1] == "push"))  # same millisecond: the claim first
            owner = None
            for _, kind, runner in seen:
                if kind == "claim":
                    owner = runner
                else:
                    pushes += 1
                    if runner != owner:
                        bad.append(task_id)
        return pushes, sorted(set(bad))

    def live_agent_pids(self, ids: list[str]) -> list[int]:
        """Fake agent processes (and their helpers) of ``ids`` still alive."""
        pids = []
        for run in self.agent_runs(ids):
            pids += [p for p in (run.pid, *run.helper_pids) if proc_alive(p)]
        return pids

    def branch_lock(self, branch: str) -> dict:
        """The lock item of ``branch`` in the stack's branch locks table ({} when there is none)."""
        table = self.store.branch_locks_table
        assert table, "the stack has a branch locks table"
        item = self.store._ddb.get_item(TableName=table, Key={"branch": {"S": branch}}, ConsistentRead=True)
        return from_dynamodb(item.get("Item", {}))

    def remote(self) -> git.Repo:
        assert self.stack.config
        return git.Repo(self.stack.config.git_remote)

    def commits_for(self, branch: str, task_id: str) -> int:
        """How many commits on the remote ``branch`` carry the trailer ``Task-Id: <task_id>``."""
        try:
            log = self.remote().git.log("--format=%B%x00", f"refs/heads/{branch}")
        except git.GitCommandError:
            return 0
        return sum(1 for body in log.split("\x00") if f"Task-Id: {task_id}\n" in body + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def log_time(line: dict) -> float:
    """A runner log line's time (Powertools' UTC timestamp) as epoch seconds; 0 when it has none."""
    try:
        return dt.datetime.strptime(str(line.get("timestamp", "")), "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
    except ValueError:
        return 0.0


def summary(capsys: Any, scenario: str, **figures: Any) -> str:
    """The scenario's one-line summary, printed past pytest's capture so it reads in any run."""
    parts = [f"{k}={v:.1f}s" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    line = f"[chaos] {scenario}: " + " ".join(parts)
    with capsys.disabled():
        print("\n" + line, flush=True)
    return line


BASE_RUNNER_ENV = {
    "AGENT": "kiro",
    "AGENT_COMMAND": FAKE_AGENT_COMMAND,
    "AGENT_TIMEOUT": "30",
    "SQS_WAIT_SECONDS": "1",
    "RUNNER_SLOTS": "2",
    "LEASE_SECONDS": "3",
    "SHUTDOWN_GRACE_SECONDS": "2",
}


@pytest.fixture
def chaos_factory(tmp_path: Path, moto_endpoint: str) -> Iterator[Callable[..., Chaos]]:
    """``make(name, runner_env=..., parameters=..., endpoint_url=...)``: a fresh stack without runners."""
    made: list[Chaos] = []

    def make(
        name: str,
        *,
        runner_env: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
        endpoint_url: str | None = None,
        reconcile_seconds: float = 3600,
        function_env: dict[str, str] | None = None,
    ) -> Chaos:
        work = tmp_path / name
        work.mkdir()
        agent_log = work / "fake-agent.log"
        logs = work / "logs"
        logs.mkdir()
        stack = LocalStack(
            work,
            runners=0,
            stack_name=unique(name)[:30],
            endpoint_url=endpoint_url or moto_endpoint,
            reconcile_seconds=reconcile_seconds,
            parameters=parameters,
            function_env=function_env,
            stream_poll_seconds=0.2,  # a 50 ms poll costs ~8 % of a core per stack
            runner_env={**BASE_RUNNER_ENV, "FAKE_AGENT_LOG": str(agent_log), **(runner_env or {})},
        )
        config = stack.start()
        ddb = aws.client("dynamodb", region=config.region, endpoint_url=config.endpoint_url)
        sqs = aws.client("sqs", region=config.region, endpoint_url=config.endpoint_url)
        store = TaskStore(ddb, config.table_name, branch_locks_table=config.branch_locks_table)
        chaos = Chaos(stack, store, sqs, agent_log, logs)
        made.append(chaos)
        return chaos

    yield make
    for chaos in made:
        for proc in chaos.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        chaos.stack.stop()


def env_pids_of(task_dir: str) -> list[int]:
    """Live processes whose cwd is inside ``task_dir`` (an orphaned agent still at work there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if task_dir in cwd and proc_alive(int(entry.name)):
                found.append(int(entry.name))
    return found
