"""Fixtures for tests that need the deployed template or the whole local stack."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import aws
from shared.models import from_dynamodb, utc_now_iso
from shared.store import TaskStore
from tests import prefork

ROOT = Path(__file__).resolve().parent.parent
FAKE_KIRO = ROOT / "tests" / "fake_agent" / "kiro-cli"
FAKE_AGENT_COMMAND = f"{FAKE_KIRO} chat --no-interactive --trust-all-tools --wrap never"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def deployed(moto_endpoint: str) -> Any:
    """template.yaml deployed into the moto server under a fresh stack name."""
    from local.deploy import deploy

    return deploy(moto_endpoint, "us-east-1", stack_name=unique("t"))


@pytest.fixture(scope="module")
def ddb(moto_endpoint: str) -> Any:
    return aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)


@pytest.fixture(scope="module")
def sqs(moto_endpoint: str) -> Any:
    return aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)


@pytest.fixture(scope="module")
def store(ddb: Any, deployed: Any) -> TaskStore:
    return TaskStore(ddb, deployed.table_name, branch_locks_table=deployed.branch_locks_table)


class AwsCli:
    """The plain aws CLI (from the venv) against the local endpoint, as operators use it."""

    def __init__(self, endpoint: str, table: str) -> None:
        self.endpoint = endpoint
        self.table = table
        exe = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "aws"
        self.exe = str(exe if exe.exists() else "aws")
        self._ddb: Any = None

    def __call__(self, *args: str) -> dict:
        out = prefork.aws(
            ["--endpoint-url", self.endpoint, "--region", "us-east-1", "--output", "json", *args],
            timeout=60,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def put_task(
        self,
        task_id: str,
        branch: str,
        *,
        title: str = "Add login validation",
        details: str = "Implement email/password validation...",
        extra: dict | None = None,
    ) -> None:
        self.put_item(self.task_item(task_id, branch, title=title, details=details, extra=extra))

    @staticmethod
    def task_item(
        task_id: str,
        branch: str,
        *,
        title: str = "Add login validation",
        details: str = "Implement email/password validation...",
        extra: dict | None = None,
    ) -> dict:
        """A pending row in DynamoDB JSON, as the seed writes it."""
        now = utc_now_iso()
        return {
            "id": {"S": task_id},
            "title": {"S": title},
            "details": {"S": details},
            "branch": {"S": branch},
            "prNumber": {"N": "42"},
            "prUrl": {"S": "https://github.com/example/aipm/pull/42"},
            "status": {"S": "pending"},
            "createdAt": {"S": now},
            "updatedAt": {"S": now},
            **(extra or {}),
        }

    def put_tasks(self, tasks: list[dict[str, Any]]) -> None:
        """Several pending rows in one ``batch-write-item`` (one CLI process, as an operator loads a
        batch): each of ``tasks`` holds ``put_task``'s arguments (task_id, branch, title, ...)."""
        self.put_items([self.task_item(**task) for task in tasks])

    def put_items(self, items: list[dict]) -> None:
        """``batch-write-item`` of ``items`` (25 at most, the API's limit), with the request in a file."""
        import tempfile

        assert 0 < len(items) <= 25, "batch-write-item takes 1 to 25 items"
        request = {self.table: [{"PutRequest": {"Item": item}} for item in items]}
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(request, f)
            f.flush()
            left = self("dynamodb", "batch-write-item", "--request-items", f"file://{f.name}")
        assert not left.get("UnprocessedItems"), left

    def put_item(self, item: dict) -> None:
        """put-item with the item in a file (``file://``), as large items need."""
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(item, f)
            f.flush()
            self("dynamodb", "put-item", "--table-name", self.table, "--item", f"file://{f.name}")

    def reset(self, task_id: str) -> None:
        self(
            "dynamodb",
            "update-item",
            "--table-name",
            self.table,
            "--key",
            json.dumps({"id": {"S": task_id}}),
            "--update-expression",
            "SET #status = :pending",
            "--expression-attribute-names",
            '{"#status":"status"}',
            "--expression-attribute-values",
            '{":pending":{"S":"pending"}}',
        )

    def get(self, task_id: str) -> dict:
        item = self(
            "dynamodb",
            "get-item",
            "--table-name",
            self.table,
            "--consistent-read",
            "--key",
            json.dumps({"id": {"S": task_id}}),
        ).get("Item")
        return from_dynamodb(item) if item else {}

    def read(self, task_id: str) -> dict:
        """The row as ``get`` returns it, read in this process (boto3, strongly consistent): for
        polling, where an aws CLI process per poll (~1 s of CPU each) would starve the runners."""
        if self._ddb is None:
            self._ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=self.endpoint)
        item = self._ddb.get_item(TableName=self.table, Key={"id": {"S": task_id}}, ConsistentRead=True)
        return from_dynamodb(item["Item"]) if "Item" in item else {}

    def wait_final(self, task_id: str, timeout: float = 60, attempts: int | None = None) -> dict:
        """The row once it is complete or failed (with ``attempts`` attempts, when given)."""
        return wait_until(
            lambda: (
                (row := self.read(task_id)).get("status") in ("complete", "failed")
                and (attempts is None or row.get("attempts") == attempts)
                and row
            ),
            timeout,
            interval=0.2,
            what=f"{task_id} to end" + (f" after attempt {attempts}" if attempts else ""),
        )

    def ended(self, task_id: str, timeout: float = 60) -> dict:
        """The ended row as the aws CLI reads it; the wait itself reads in this process, as an aws CLI
        process per poll (~1 CPU-s each, five a second) would take a core from the runners."""
        self.wait_final(task_id, timeout)
        return self.get(task_id)


def wait_until(
    check: Callable[[], Any], timeout: float = 60, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy (test-side only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_final(store: TaskStore, task_id: str, timeout: float = 60) -> dict:
    def final() -> dict | None:
        row = store.get_row(task_id)
        return row if row.get("status") in ("complete", "failed") else None

    return wait_until(final, timeout, what=f"task {task_id} to end")


@pytest.fixture(scope="module")
def local_stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack (template in moto, pollers, bare remote) with one runner on the fake agent."""
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("stack")
    log = work / "fake-agent.log"
    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique("e2e"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        stream_poll_seconds=0.2,  # a 50 ms poll costs ~8 % of a core per stack
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_TIMEOUT": "4",
            "FAKE_AGENT_LOG": str(log),
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "2",
            "LEASE_SECONDS": "30",
        },
    )
    stack.start()
    stack.fake_agent_log = log  # type: ignore[attr-defined]
    try:
        yield stack
    finally:
        stack.stop()


def aipm_in(workdir: Path, *args: str) -> str:
    """``aipm ARGS`` run as a user in the stack's folder (it finds the stack from .aipm/local.json, not
    from this process's endpoint or secrets); its output, or the test fails with its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TOKEN_SECRET", "WS_URL")}
    out = prefork.aipm(args, cwd=workdir, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@contextlib.contextmanager
def metadata_stand_in() -> Iterator[tuple[str, list[bytes]]]:
    """A listener on host loopback standing in for the instance metadata service: its address and
    what reached it (a connection that sent nothing counts as ``(connected)``)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                got.append(conn.recv(100) or b"(connected)")

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", got
    finally:
        stop.set()
        serving.join(5)
        server.close()


def read_plain(item: dict) -> dict:
    return from_dynamodb(item)


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the time (pytest's capture changes it between phases)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@contextlib.contextmanager
def lambdas_to_current_stdout() -> Iterator[None]:
    """The in-process Lambdas' output (log lines and EMF metrics) to whatever ``sys.stdout`` is now
    (pytest's capture): the shared Logger keeps the stream it was made with, as in Lambda, and an
    earlier test in this process (the local stack's demo) may have pointed it at a file."""
    from shared.observability import logger

    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    made_with = handler.stream
    handler.setStream(_CurrentStdout())
    try:
        yield
    finally:
        handler.setStream(made_with)


@pytest.fixture
def lambda_stdout(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The Lambdas' output into ``capsys`` for this test."""
    with lambdas_to_current_stdout():
        yield capsys
