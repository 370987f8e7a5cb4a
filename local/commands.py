"""``aipm local up`` and ``aipm local demo``: the local stack's own program (``python -m local``).

Their console is for a person: it shows the sentences these commands print, nothing else. Log
lines (JSON) go to ``.aipm/logs/``: the stack's own to ``local.log``, the in-process Lambdas' to
``lambdas.log``, each runner's to ``runner-N.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ec2_runner import logs
from local.stack import DEFAULT_AWS_PORT, LocalStack, LocalStackConfig
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


@dataclass
class _Logs:
    """Where the log lines of ``aipm local up`` / ``demo`` go, and the open file of the Lambdas'."""

    dir: Path
    lambdas: TextIO


@contextlib.contextmanager
def _console_for_people(log_dir: Path) -> Iterator[_Logs]:
    """Log lines to ``log_dir/local.log`` instead of the console, and with them whatever else this
    process writes to stderr (a traceback from moto's or werkzeug's server, a thread's last words,
    a warning): the console keeps the sentences the command prints."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs.configure(service="aipm-local", path=log_dir / "local.log")
    with (
        open(log_dir / "local.log", "a", buffering=1) as stderr,
        open(log_dir / "lambdas.log", "a", buffering=1) as lambdas,
        contextlib.redirect_stderr(stderr),
    ):
        yield _Logs(log_dir, lambdas)


def _start(stack: LocalStack, where: _Logs) -> LocalStackConfig:
    """Start the stack; the Lambdas it loads log to ``lambdas.log``, as CloudWatch would hold them
    (Powertools' loggers write to the stdout they find when they are made)."""
    print("starting the local stack (moto, template.yaml, the Lambdas, runners)...", flush=True)
    with contextlib.redirect_stdout(where.lambdas):
        return stack.start()


def _run(command: str, body: Callable[[_Logs], int]) -> int:
    """Run ``body`` with the console for people: a failure is a sentence here, its traceback in the
    log; Ctrl-C at any point stops cleanly."""
    log_dir = Path.cwd() / ".aipm" / "logs"
    try:
        with _console_for_people(log_dir) as where:
            try:
                return body(where)
            except Exception as e:
                logger.exception("aipm local %s failed", command)
                print(f"aipm local {command} failed: {e} (details in {log_dir / 'local.log'})", flush=True)
                return 1
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 130


def _print_logs(log_dir: Path, runners: int) -> None:
    names = ["local.log", "lambdas.log", *(f"runner-{i}.log" for i in range(runners))]
    print(f"logs (JSON lines) in {log_dir}/: {', '.join(names)}", flush=True)


def up(runners: int = 1, aws_port: int = DEFAULT_AWS_PORT, gateway_port: int | None = None) -> int:
    """The local stack in the foreground until Ctrl-C; endpoints in ``.aipm/local.json``."""
    gateway_port = int(os.environ.get("PORT", "8080")) if gateway_port is None else gateway_port

    def body(where: _Logs) -> int:
        stack = LocalStack(
            Path.cwd(), runners=runners, aws_port=aws_port, gateway_port=gateway_port, log_dir=where.dir
        )
        try:
            cfg = _start(stack, where)
            print(f"local stack up: endpoint {cfg.endpoint_url}, table {cfg.table_name}", flush=True)
            print(f"  task queue  {cfg.task_queue_url}\n  git remote  {cfg.git_remote}", flush=True)
            if cfg.page_url:
                print(f"  terminal    {cfg.page_url}  (WebSocket {cfg.ws_url})", flush=True)
            _print_logs(where.dir, runners)
            print(f"  {runners} runner(s); endpoints written to .aipm/local.json; Ctrl-C to stop", flush=True)
            _wait_for_signal()
        finally:
            stack.stop()
        return 0

    return _run("up", body)


def demo(aws_port: int = DEFAULT_AWS_PORT) -> int:
    """The whole system on the embedded default: one sample task from pending to a pushed commit."""
    return _run("demo", lambda where: _demo(aws_port, where))


def _demo(aws_port: int, where: _Logs) -> int:
    events: queue.Queue[dict] = queue.Queue()
    gateway_port = int(os.environ.get("PORT", "8080"))
    stack = LocalStack(Path.cwd(), runners=1, aws_port=aws_port, gateway_port=gateway_port, log_dir=where.dir)
    try:
        cfg = _start(stack, where)
        assert stack.stream is not None
        stack.stream.listeners.append(events.put)
        print(f"local stack up (AWS endpoint {cfg.endpoint_url}, table {cfg.table_name})", flush=True)
        _print_logs(where.dir, 1)
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
        if cfg.page_url:
            print(f"watch it run in the terminal page: {cfg.page_url}?watch={task_id}", flush=True)
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


def build_parser() -> argparse.ArgumentParser:
    """``aipm local``'s arguments (``aipm`` hands everything after ``local`` to this program)."""
    p = argparse.ArgumentParser(
        prog="aipm local", description="The local stack: the whole system on this machine."
    )
    sub = p.add_subparsers(dest="local_cmd", required=True)
    up_ = sub.add_parser("up", help="start the local stack in the foreground")
    up_.add_argument("--runners", type=int, default=1)
    up_.add_argument(
        "--aws-port", type=int, default=DEFAULT_AWS_PORT, help="moto server port (0: any free port)"
    )
    up_.add_argument(
        "--port", type=int, default=None, help="local WebSocket gateway port (default $PORT or 8080)"
    )
    demo_ = sub.add_parser("demo", help="the local stack plus a sample task")
    demo_.add_argument("--aws-port", type=int, default=DEFAULT_AWS_PORT)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m local`` / ``aipm local``."""
    args = build_parser().parse_args(argv)
    logs.configure(service="aipm-local")
    if args.local_cmd == "up":
        return up(runners=args.runners, aws_port=args.aws_port, gateway_port=args.port)
    return demo(aws_port=args.aws_port)
