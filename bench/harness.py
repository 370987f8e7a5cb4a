"""The shared set-up: moto over HTTP, counting proxies, the template deployed by the local stack,
real runner processes on the fake Kiro CLI, and the bench's own view of the table."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.proxy import CountingProxy
from bench.seed import create_seed_table
from local.motoserver import MotoServer
from local.stack import LocalStack
from shared import aws
from shared.models import from_dynamodb, to_dynamodb, utc_now_iso

ROOT = Path(__file__).resolve().parent.parent
FAKE_KIRO = ROOT / "tests" / "fake_agent" / "kiro-cli"
AGENT_COMMAND = f"{FAKE_KIRO} chat --no-interactive --trust-all-tools --wrap never"
REGION = "us-east-1"
SQS_WAIT = 5

logger = logging.getLogger(__name__)


def iso_to_epoch(stamp: str) -> float:
    """The rows' ``...T12:00:00.123Z`` timestamps as epoch seconds."""
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set (or ``VmHWM``, its peak) in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_times(pid: int) -> tuple[float, float]:
    """CPU seconds a process used itself, and those of the children it has waited for (a runner's
    agents and git commands): utime + stime, cutime + cstime of /proc/<pid>/stat."""
    fields = [int(x) for x in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[11:15]]
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[0] + fields[1]) / tick, (fields[2] + fields[3]) / tick


class Runner:
    """One real runner process (``python -m ec2_runner``) that this bench started."""

    def __init__(
        self,
        proc: subprocess.Popen,
        slots: int,
        log: Path,
        proxy: CountingProxy,
        env: dict[str, str] | None = None,
    ) -> None:
        self.proc, self.slots, self.log, self.proxy = proc, slots, log, proxy
        self.env = env or {}
        self._asked = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask_stop(self) -> None:
        """One SIGTERM, a warm stop (a second one would make it cold)."""
        if not self._asked and self.proc.poll() is None:
            self._asked = True
            self.proc.terminate()

    def stop(self) -> None:
        # a warm stop (SIGTERM) ends after the current long poll; then wait until the proxy has no
        # receive of it left open at moto, which would swallow the next message
        if self.proc.poll() is None:
            self.ask_stop()
            try:
                self.proc.wait(timeout=SQS_WAIT + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + SQS_WAIT + 2
        while self.proxy.pending("ReceiveMessage") and time.monotonic() < deadline:
            time.sleep(0.05)


class Harness:
    """Everything the benchmarks share; start once, then ask for runners and tasks."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="aipm-bench-"))
        # in a folder of its own: the sandboxed runs' agents may write there and nowhere else outside
        self.agent_log = self.workdir / "agent-log" / "fake-agent.log"
        self.agent_log.parent.mkdir()
        self.moto: MotoServer | None = None
        self.stack: LocalStack | None = None
        self.runner_proxy: CountingProxy | None = None  # every request the runners send
        self.system_proxy: CountingProxy | None = None  # the stream poller and the functions
        self.seed_proxy: CountingProxy | None = None  # the seed baseline's poller
        self.current: list[Runner] = []  # the runners consuming the task queue now
        self.started_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        self.moto = MotoServer(port=0)
        self.endpoint = self.moto.start()
        self.system_proxy = CountingProxy(self.endpoint, "system")
        self.runner_proxy = CountingProxy(self.endpoint, "runner")
        self.seed_proxy = CountingProxy(self.endpoint, "seed")
        for p in (self.system_proxy, self.runner_proxy, self.seed_proxy):
            p.start()
        self.stack = LocalStack(
            self.workdir,
            runners=0,
            stack_name="aipm-bench",
            endpoint_url=self.system_proxy.url,
            reconcile_seconds=60.0,  # the template's ReconcileSchedule default, rate(1 minute)
            function_env={"POWERTOOLS_LOG_LEVEL": "WARNING"},  # the table is the output here
            runner_env={
                "AWS_ENDPOINT_URL": self.runner_proxy.url,
                "AGENT": "kiro",
                "AGENT_COMMAND": AGENT_COMMAND,
                "AGENT_TIMEOUT": "120",
                "FAKE_AGENT_LOG": str(self.agent_log),
                # unsandboxed unless a benchmark asks (the sandbox row); its agents may log here
                "AGENT_SANDBOX": "off",
                "AGENT_SANDBOX_WRITABLE": str(self.agent_log.parent),
                # long polls of 5 s, not 20: a stopped runner's poll must end before the next one
                # starts, or moto hands the next message to the dead poll (see README)
                "SQS_WAIT_SECONDS": str(SQS_WAIT),
                # the fake agent's `#!/usr/bin/env python3` should find the venv's python, not a
                # pyenv shim that costs ~0.2 s per start: agent start-up is not the runner's cost
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
                "LEASE_SECONDS": "60",
            },
        )
        # the in-process Lambdas' log lines and EMF metrics go to a file, as CloudWatch would hold
        # them (Powertools' loggers write to the stdout they find when made), not into the table
        self._lambda_log = open(self.workdir / "lambdas.log", "a", buffering=1)  # lives with the stack
        with contextlib.redirect_stdout(self._lambda_log):
            self.config = self.stack.start()
        self.table = self.config.table_name
        # the bench's own reads and writes go straight to moto: they are not the system's
        self.ddb = aws.client("dynamodb", region=REGION, endpoint_url=self.endpoint)
        self.seed_table = "aipm-seed-baseline-queue"
        create_seed_table(self.ddb, self.seed_table)
        self.seed_ddb = aws.client("dynamodb", region=REGION, endpoint_url=self.seed_proxy.url)

    def stop(self) -> None:
        self._stop_runners()
        if self.stack:
            self.stack.stop()
        for p in (self.system_proxy, self.runner_proxy, self.seed_proxy):
            if p:
                p.stop()
        if self.moto:
            self.moto.stop()
        if getattr(self, "_lambda_log", None):
            self._lambda_log.close()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- runners -----------------------------------------------------------------------------
    def runner(self, slots: int, env: dict[str, str] | None = None) -> Runner:
        """A warmed-up runner with ``slots`` slots (and ``env`` on top of the stack's), the only
        consumer of the task queue."""
        return self.runners(1, slots, env)[0]

    def runners(self, count: int, slots: int, env: dict[str, str] | None = None) -> list[Runner]:
        """``count`` warmed-up runners with ``slots`` slots each, the only consumers of the queue."""
        env = env or {}
        live = [r for r in self.current if r.proc.poll() is None]
        if len(live) == count == len(self.current) and all(r.slots == slots and r.env == env for r in live):
            return self.current
        self._stop_runners()
        assert self.stack and self.runner_proxy
        for _ in range(count):
            # the stack numbers its runners, so every runner (the terminal bench's too) has its own clone
            log = self.workdir / f"runner-{len(self.stack.runners)}-{slots}-slots.log"
            proc = self.stack.start_runner(extra_env={"RUNNER_SLOTS": str(slots), **env}, log_path=log)
            self.current.append(Runner(proc, slots, log, self.runner_proxy, env))
        if count > 1:
            # each one polling before the warm-up tasks go in, so the first does not take them all
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(_polling(r) for r in self.current):
                time.sleep(0.05)
        # warm-up: imports, the clone and the first worktree are start-up costs, not per-task ones
        warm = [self.put_task("warmup", "[fake:sleep=0]") for _ in range(count)]
        for task_id in warm:
            row = self.wait_final(task_id, timeout=90)
            if row.get("status") != "complete":
                logs = ", ".join(str(r.log) for r in self.current)
                raise RuntimeError(f"warm-up task did not complete: {row.get('error')!r}; see {logs}")
        return self.current

    def _stop_runners(self) -> None:
        # all of them asked at once: each warm stop waits out its long poll
        for r in self.current:
            r.ask_stop()
        for r in self.current:
            r.stop()
        self.current = []

    # -- tasks -------------------------------------------------------------------------------
    def put_task(self, prefix: str, details: str, table: str | None = None, branch: str | None = None) -> str:
        """Insert a pending row as a backend does (a put-item); returns its id. The branch is the
        task's own unless ``branch`` names one."""
        row = _task_row(prefix, details, branch)
        self.ddb.put_item(TableName=table or self.table, Item=to_dynamodb(row))
        return str(row["id"])

    def put_tasks(self, prefix: str, details: str, count: int) -> list[str]:
        """Insert ``count`` pending rows at once, each on a branch of its own (BatchWriteItem, 25
        rows a call, unprocessed ones sent again); returns their ids."""
        rows = [_task_row(prefix, details) for _ in range(count)]
        for i in range(0, len(rows), 25):
            requests = [{"PutRequest": {"Item": to_dynamodb(r)}} for r in rows[i : i + 25]]
            while requests:
                left = self.ddb.batch_write_item(RequestItems={self.table: requests})
                requests = left.get("UnprocessedItems", {}).get(self.table, [])
        return [str(r["id"]) for r in rows]

    def get(self, task_id: str, table: str | None = None) -> dict[str, Any]:
        item = self.ddb.get_item(
            TableName=table or self.table, Key={"id": {"S": task_id}}, ConsistentRead=True
        ).get("Item")
        return from_dynamodb(item) if item else {}

    def wait_final(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = self.get(task_id)
            if row.get("status") in ("complete", "failed"):
                return row
            time.sleep(0.05)
        return row

    def wait_all_final(
        self, task_ids: list[str], timeout: float, every: float = 0.5, until: str | None = None
    ) -> dict[str, dict]:
        """The rows of ``task_ids`` once all are final, or have the field ``until`` (or at the
        timeout: as they are then), read 100 at a time. The rows' own timestamps are what is
        measured, so a slow poll costs nothing but keeps the bench's reads from crowding moto's
        one-at-a-time DynamoDB."""
        deadline = time.monotonic() + timeout
        rows: dict[str, dict] = {}

        def ready(task_id: str) -> bool:
            row = rows.get(task_id, {})
            return row.get("status") in ("complete", "failed") or bool(until and row.get(until))

        while True:
            todo = [t for t in task_ids if not ready(t)]
            for i in range(0, len(todo), 100):
                keys = [{"id": {"S": t}} for t in todo[i : i + 100]]
                while keys:
                    resp = self.ddb.batch_get_item(
                        RequestItems={
                            self.table: {
                                "Keys": keys,
                                "ConsistentRead": True,
                                # moto serialises every attribute it returns, slowly: only these
                                "ProjectionExpression": "id, #s, startedAt, finishedAt, runnerId",
                                "ExpressionAttributeNames": {"#s": "status"},
                            }
                        }
                    )
                    for item in resp.get("Responses", {}).get(self.table, []):
                        row = from_dynamodb(item)
                        rows[row["id"]] = row
                    keys = resp.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
            if all(ready(t) for t in task_ids) or time.monotonic() > deadline:
                return rows
            time.sleep(every)

    def abandon(self, task_ids: list[str]) -> int:
        """Fail the rows of ``task_ids`` still pending, so a late signal (the reconciler's) does not
        run them during another benchmark; returns how many it failed."""
        n = 0
        for task_id in task_ids:
            try:
                self.ddb.update_item(
                    TableName=self.table,
                    Key={"id": {"S": task_id}},
                    UpdateExpression="SET #s = :failed, #e = :why",
                    ConditionExpression="#s = :pending",
                    ExpressionAttributeNames={"#s": "status", "#e": "error"},
                    ExpressionAttributeValues={
                        ":failed": {"S": "failed"},
                        ":pending": {"S": "pending"},
                        ":why": {"S": "abandoned by the bench: not claimed in time"},
                    },
                )
                n += 1
            except self.ddb.exceptions.ConditionalCheckFailedException:
                pass
        return n

    def agent_runs(self) -> dict[str, tuple[float, float]]:
        """The fake agent's own start and end times, by the worktree it ran in."""
        starts: dict[str, float] = {}
        runs: dict[str, tuple[float, float]] = {}
        if not self.agent_log.exists():
            return runs
        for line in self.agent_log.read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "start":
                starts[ev["cwd"]] = ev["time"]
            elif ev.get("event") == "end" and ev.get("cwd") in starts:
                runs[ev["cwd"]] = (starts[ev["cwd"]], ev["time"])
        return runs

    def agents_ended(self, prefix: str) -> dict[str, tuple[float, float]]:
        """The fake agent's (start, end) by task id, for the tasks ``put_task`` or ``put_tasks``
        made with ``prefix`` whose agent ended; read from its log, so waiting on it costs the
        system under test nothing."""
        pattern = re.compile(rf"/task-({re.escape(prefix)}-[0-9a-f]{{10}})")
        return {m.group(1): run for cwd, run in self.agent_runs().items() if (m := pattern.search(cwd))}

    def log_times(self, runner: Runner, text: str) -> dict[str, float]:
        """When each task's first line containing ``text`` was logged by ``runner``, by task id
        (the runner's JSON lines carry ``task_id`` and a millisecond ``timestamp``)."""
        found: dict[str, float] = {}
        for line in runner.log.read_text(errors="replace").splitlines():
            if text not in line:
                continue
            try:
                ev = json.loads(line)
                at = dt.datetime.strptime(ev["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if text in str(ev.get("message", "")) and isinstance(ev.get("task_id"), str):
                found.setdefault(ev["task_id"], at)
        return found

    def agent_run(self, task_id: str) -> tuple[float, float] | None:
        """The fake agent's own (start, end) wall times for a task, from its log."""
        for cwd, run in self.agent_runs().items():
            if f"task-{task_id}" in cwd:
                return run
        return None


def _task_row(prefix: str, details: str, branch: str | None = None) -> dict[str, Any]:
    task_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    now = utc_now_iso()
    return {
        "id": task_id,
        "title": f"Bench {prefix}",
        "details": f"Benchmark task. {details}",
        "branch": branch or f"feature/bench-{task_id}",
        "prNumber": 42,
        "prUrl": "https://github.com/example/aipm/pull/42",
        "status": "pending",
        "createdAt": now,
        "updatedAt": now,
    }


def _polling(runner: Runner) -> bool:
    """Whether the runner process has started serving (its start line is in its log)."""
    try:
        return b"runner started" in runner.log.read_bytes()
    except FileNotFoundError:
        return False


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
