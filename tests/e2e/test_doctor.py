"""`aipm doctor` as an operator runs it in the local stack's folder: a healthy stack passes every
check (exit 0), and each broken part gets its own sentence and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack import LocalStack
from shared import aws
from tests import prefork
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

AGENT = {"AGENT": "kiro", "AGENT_COMMAND": FAKE_AGENT_COMMAND, "AGENT_SANDBOX": "off"}


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(
        tmp_path_factory.mktemp("doctor"),
        runners=0,
        stack_name=unique("doc"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        gateway_port=0,  # the WebSocket stand-in, so the WebSocket check has a URL to open
        runner_env=AGENT,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def doctor(workdir: Path, **env: str) -> tuple[int, dict[str, Any], str]:
    """`aipm doctor --json` in ``workdir`` as a user runs it there (the stack found through
    .aipm/local.json), with ``env`` on top: exit code, the report by check name, stderr."""
    base = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TOKEN_SECRET", "WS_URL")}
    proc = prefork.aipm(["doctor", "--json"], cwd=workdir, env={**base, **env}, timeout=90)
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is (proc.returncode == 0)
    return proc.returncode, {c["name"]: c for c in report["checks"]}, proc.stderr


def test_doctor_on_a_healthy_local_stack_passes_every_check(stack: LocalStack) -> None:
    code, checks, _ = doctor(stack.workdir)
    assert code == 0, checks
    assert {name: c["status"] for name, c in checks.items()} == {
        "aws": "ok",
        "table": "ok",
        "queues": "ok",
        "websocket": "ok",
        "git": "ok",
        "sandbox": "skip",  # AGENT_SANDBOX=off here
        "agent": "ok",
    }
    assert "stream on" in checks["table"]["message"]
    assert "dead-letter queue" in checks["queues"]["message"]
    assert "push is allowed" in checks["git"]["message"]
    assert "logged in" in checks["agent"]["message"]
    # and people get a table of the same
    human = prefork.aipm(
        ["doctor"],
        cwd=stack.workdir,
        env={k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"} | {"COLUMNS": "200"},
        timeout=90,
    )
    assert human.returncode == 0 and "all checks pass" in human.stdout


def test_an_agent_that_is_not_logged_in_fails_the_agent_check_saying_how_to_log_it_in(
    stack: LocalStack, tmp_path: Path
) -> None:
    home = tmp_path / "kiro-home"
    home.mkdir()
    subprocess.run(
        [sys.executable, str(FAKE_KIRO), "logout"],
        env={**os.environ, "FAKE_KIRO_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k == "KIRO_API_KEY"}
    assert not env, "the suite runs without KIRO_API_KEY"
    code, checks, _ = doctor(stack.workdir, FAKE_KIRO_HOME=str(home))
    assert code == 1
    assert checks["agent"]["status"] == "FAIL"
    assert "not logged in" in checks["agent"]["message"]
    assert "KIRO_API_KEY" in checks["agent"]["message"] and "kiro-cli login" in checks["agent"]["message"]
    assert all(c["status"] != "FAIL" for name, c in checks.items() if name != "agent")
    # an API key is a credential
    code, checks, _ = doctor(stack.workdir, FAKE_KIRO_HOME=str(home), KIRO_API_KEY="kiro-key-for-tests")
    assert code == 0 and checks["agent"]["status"] == "ok"
    assert "kiro-key-for-tests" not in json.dumps(checks)


def test_a_wrong_git_remote_fails_the_git_check_naming_the_remote(stack: LocalStack, tmp_path: Path) -> None:
    wrong = tmp_path / "no-such-repo.git"
    code, checks, _ = doctor(stack.workdir, GIT_REMOTE=str(wrong))
    assert code == 1
    assert checks["git"]["status"] == "FAIL"
    message = checks["git"]["message"]
    assert f"git read of {wrong} failed" in message and "check GIT_REMOTE" in message


def test_a_table_without_its_stream_fails_the_table_check_saying_how_to_turn_it_on(
    stack: LocalStack, moto_endpoint: str
) -> None:
    # an adopted table whose stream was never turned on
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    name = unique("no-stream")
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    code, checks, _ = doctor(stack.workdir, TABLE_NAME=name)
    assert code == 1
    assert checks["table"]["status"] == "FAIL"
    assert f"the table {name!r} has no stream" in checks["table"]["message"]
    assert "NEW_AND_OLD_IMAGES" in checks["table"]["message"]
    # with the stream on, the missing status index is the next sentence
    ddb.update_table(
        TableName=name, StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    )
    code, checks, _ = doctor(stack.workdir, TABLE_NAME=name)
    assert code == 1 and "has no status-createdAt-index" in checks["table"]["message"]


def test_a_stopped_stack_fails_fast_naming_the_endpoint_it_could_not_reach(tmp_path: Path) -> None:
    # given: a local stack with its own AWS endpoint, started and then stopped
    stack = LocalStack(tmp_path / "stopped", runners=0, stack_name=unique("gone"), runner_env=AGENT)
    config = stack.start()
    stack.stop()

    # when
    code, checks, _ = doctor(stack.workdir)

    # then
    assert code == 1
    assert checks["aws"]["status"] == "FAIL"
    assert f"cannot reach {config.endpoint_url}" in checks["aws"]["message"]
    assert "aipm local up" in checks["aws"]["message"]
    assert checks["table"]["status"] == "skip" and checks["queues"]["status"] == "skip"
