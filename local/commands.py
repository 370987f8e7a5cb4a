"""``aipm local up`` and ``aipm local demo``."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from local.stack import DEFAULT_AWS_PORT, LocalStack
from shared import aws
from shared.models import from_dynamodb
from shared.store import TaskStore

logger = logging.getLogger(__name__)

SAMPLE_TASK = {
    "title": "Add login validation",
    "details": "Implement email/password validation on the login form: reject empty fields, "
    "malformed email addresses and passwords shorter than 8 characters, with inline error messages.",
    "prNumber": 42,
    "prUrl": "https://github.com/example/aipm/pull/42",
}


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass


def up(runners: int = 1, aws_port: int = DEFAULT_AWS_PORT, gateway_port: int | None = None) -> int:
    """The local stack in the foreground until Ctrl-C; endpoints in ``.aipm/local.json``."""
    gateway_port = int(os.environ.get("PORT", "8080")) if gateway_port is None else gateway_port
    stack = LocalStack(Path.cwd(), runners=runners, aws_port=aws_port, gateway_port=gateway_port)
    try:
        cfg = stack.start()
        print(f"local stack up: endpoint {cfg.endpoint_url}, table {cfg.table_name}", flush=True)
        print(f"  task queue  {cfg.task_queue_url}\n  git remote  {cfg.git_remote}", flush=True)
        if cfg.page_url:
            print(f"  terminal    {cfg.page_url}  (WebSocket {cfg.ws_url})", flush=True)
        print(f"  {runners} runner(s); endpoints written to .aipm/local.json; Ctrl-C to stop", flush=True)
        _wait_for_signal()
    finally:
        stack.stop()
    return 0


def _lambda_logs_to(path: Path) -> None:
    """The in-process Lambdas' Powertools loggers write to ``path``, as CloudWatch would hold them,
    so the demo's own lines stay readable."""
    out = open(path, "a", buffering=1)  # lives as long as the process, like the loggers
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger) and name.startswith("aipm-"):
            for handler in lg.handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.setStream(out)


def demo(aws_port: int = DEFAULT_AWS_PORT) -> int:
    """The whole system on the embedded default: one sample task from pending to a pushed commit."""
    events: queue.Queue[dict] = queue.Queue()
    gateway_port = int(os.environ.get("PORT", "8080"))
    log_dir = Path.cwd() / ".aipm" / "logs"
    stack = LocalStack(Path.cwd(), runners=1, aws_port=aws_port, gateway_port=gateway_port, log_dir=log_dir)
    try:
        cfg = stack.start()
        _lambda_logs_to(log_dir / "lambdas.log")
        print(f"logs (JSON lines): {log_dir}/runner-0.log, {log_dir}/lambdas.log", flush=True)
        assert stack.stream is not None
        stack.stream.listeners.append(events.put)
        print(f"local stack up (AWS endpoint {cfg.endpoint_url}, table {cfg.table_name})", flush=True)
        if os.environ.get("AGENT", "auto") == "auto":
            from shutil import which

            if not which("kiro-cli"):
                print(
                    "kiro-cli not found: the runner uses the DEMO AGENT, a stand-in that edits a file",
                    flush=True,
                )
        assert cfg.branch_locks_table, "the template defines the branch locks table"
        store = TaskStore(
            aws.client("dynamodb", region=cfg.region, endpoint_url=cfg.endpoint_url),
            cfg.table_name,
            branch_locks_table=cfg.branch_locks_table,
        )
        task_id = f"demo-{uuid.uuid4().hex[:8]}"
        branch = f"feature/add-login-validation-{task_id}"
        store.put_new({"id": task_id, "branch": branch, **SAMPLE_TASK})
        print(f"inserted task {task_id} (branch {branch}), status pending", flush=True)
        final = _follow(events, task_id, timeout=300)
        if final.get("status") == "complete":
            import git

            remote = git.Repo(cfg.git_remote)
            sha = remote.git.rev_parse(f"refs/heads/{branch}")
            print(f"pushed commit {sha} on {branch}:", flush=True)
            print(remote.git.show("--stat", "--format=  %h %s", sha), flush=True)
        else:
            print(f"task ended {final.get('status')}: {final.get('error')}", flush=True)
        print(
            "\nthe stack keeps running: insert more rows with the aws CLI (see README); Ctrl-C to stop",
            flush=True,
        )
        if cfg.page_url and cfg.env.get("TOKEN_SECRET"):
            from shared import tokens

            token = tokens.mint(cfg.env["TOKEN_SECRET"], sub="demo", task=task_id, ttl=3600)
            print(f"refine it live in the terminal page: {cfg.page_url}?token={token}", flush=True)
            print(f"  or from this shell: .venv/bin/aipm terminal {task_id}", flush=True)
        _wait_for_signal()
        return 0 if final.get("status") == "complete" else 1
    finally:
        stack.stop()


def _follow(events: queue.Queue[dict], task_id: str, timeout: float) -> dict[str, Any]:
    """Print the row's transitions as the table's stream shows them, until it ends."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            record = events.get(timeout=1)
        except queue.Empty:
            continue
        image = record.get("dynamodb", {}).get("NewImage")
        if not image:
            continue
        row = from_dynamodb(image)
        if row.get("id") != task_id:
            continue
        old = from_dynamodb(record["dynamodb"].get("OldImage") or {}).get("status")
        if old != row.get("status"):
            extra = f" commit {row['commitSha']}" if row.get("commitSha") else ""
            extra += f" error: {row['error']}" if row.get("error") and row.get("status") == "failed" else ""
            print(
                f"  +{time.monotonic() - started:6.2f}s  {old or '-':>10} -> {row.get('status')}{extra}",
                flush=True,
            )
        if row.get("status") in ("complete", "failed"):
            return row
    return {"status": "timeout", "error": f"no final status within {timeout} s"}
