"""Dead letters an operator can inspect, on the local stack with real runner processes: a poison task
given up stays in the DLQ (the plain aws CLI finds it), ``aipm dlq`` lists, shows, redrives and
purges, and bad input gets its sentence and exit code with nothing changed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import aws
from shared.dead_letters import DeadLetterQueue
from tests import prefork
from tests.fixtures import FAKE_AGENT_COMMAND, AwsCli, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


class Supervised:
    """One runner restarted whenever it dies, as systemd's Restart=always does on a runner machine."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.deaths = 0
        self._stop = threading.Event()
        self.proc = stack.start_runner(index=0)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            if self.proc.poll() is not None:
                self.deaths += 1
                self.proc = self.stack.start_runner(index=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """maxReceiveCount 2 and a 5 s lease (10 s visibility): a poison task is given up in ~25 s. (A 3 s
    lease left a 2 s renewal budget, which a runner on a machine loaded by the rest of the suite
    missed twice before its agent started: the task was given up with no runner killed.)"""
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("dlq")
    stack = LocalStack(
        work,
        runners=0,
        stack_name=unique("dlq"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        stream_poll_seconds=0.2,
        parameters={"MaxReceiveCount": 2},
        log_dir=work / "logs",
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_TIMEOUT": "10",
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "1",
            "LEASE_SECONDS": "5",
        },
    )
    stack.start()
    supervised = Supervised(stack)
    stack.supervised = supervised  # type: ignore[attr-defined]
    try:
        yield stack
    finally:
        supervised.stop()
        stack.stop()


@pytest.fixture(scope="module")
def cli(stack: Any) -> AwsCli:
    return AwsCli(stack.config.endpoint_url, stack.config.table_name)


@pytest.fixture(scope="module")
def sqs(stack: Any) -> Any:
    return aws.client("sqs", region="us-east-1", endpoint_url=stack.config.endpoint_url)


@pytest.fixture(autouse=True)
def empty_dlq(stack: Any, sqs: Any) -> Iterator[None]:
    """Each test starts and ends with no letters (one stack serves the module)."""
    purge(stack, sqs)
    yield
    purge(stack, sqs)


def purge(stack: Any, sqs: Any) -> None:
    # one moto server: an empty answer without a long poll already means none is left
    queue = DeadLetterQueue(sqs, stack.config.dlq_url, wait_seconds=0)
    with queue.held() as held:
        for h in held:
            queue.delete(h)


def aipm(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``aipm ARGS`` as a user runs it in the stack's folder (it finds the stack from its file)."""
    base = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TASK_QUEUE_URL", "DLQ_URL")}
    return prefork.aipm(args, cwd=workdir, env={**base, **(env or {})}, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def listed(stack: Any) -> list[dict[str, Any]]:
    return json.loads(ok(aipm(stack.workdir, "dlq", "list", "--json")))


def letter_in_dlq(stack: Any, sqs: Any, body: str) -> str:
    """A letter put in the DLQ as SQS would leave one that reached it without the function."""
    return str(sqs.send_message(QueueUrl=stack.config.dlq_url, MessageBody=body)["MessageId"])


def visible(stack: Any, sqs: Any) -> int:
    """Letters visible in the DLQ (what its depth alarm watches)."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=stack.config.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def test_a_poison_task_given_up_stays_in_the_dlq_until_redriven(stack: Any, cli: AwsCli, sqs: Any) -> None:
    """The poison kills its runner on each of its 2 receives: the row ends failed/gave_up; the
    plain aws CLI still finds its letter after the dead-letter function has long been done with
    it; ``dlq list --json`` shows it with the task's status; once the task is fixed, ``dlq redrive``
    runs it to complete and the DLQ is empty."""
    # given
    poison = unique("poison")
    deaths = stack.supervised.deaths
    cli.put_task(poison, f"feature/{poison}", details="[fake:killparent]")
    # when
    row = cli.wait_final(poison, 90)
    # then
    assert (row["status"], row.get("errorKind"), row["attempts"]) == ("failed", "gave_up", 2), row
    assert row["error"].startswith("gave up after 2 attempts: the runner working on it stopped heartbeating")
    assert stack.supervised.deaths - deaths == 2
    # the letter is filed, and stays: nothing consumes the DLQ (a few poll cycles of the intake later)
    wait_until(lambda: visible(stack, sqs) == 1, 20, what="the poison's letter in the DLQ")
    time.sleep(3)
    found = cli(
        "sqs",
        "receive-message",
        "--queue-url",
        stack.config.dlq_url,
        "--wait-time-seconds",
        "1",
        "--visibility-timeout",
        "0",
        "--message-attribute-names",
        "All",
    )["Messages"]
    assert [json.loads(m["Body"])["taskId"] for m in found] == [poison]
    assert found[0]["MessageAttributes"]["aipm.verdict"]["StringValue"] == "gave_up"

    (letter,) = wait_until(lambda: listed(stack) or None, 10, what="the letter to be visible again")
    assert (letter["task_id"], letter["verdict"], letter["task_status"]) == (poison, "gave_up", "failed")
    assert letter["task"]["errorKind"] == "gave_up" and letter["task"]["error"] == row["error"]
    assert letter["receive_count"] >= 2 and letter["first_sent"] and letter["age_seconds"] > 0
    assert letter["original_message_id"] and letter["original_message_id"] != letter["message_id"]
    # the table view shows the same letter (in a terminal wide enough for a message id)
    table = ok(aipm(stack.workdir, "dlq", "list", env={"COLUMNS": "250"}))
    assert letter["message_id"] in table and poison in table and "failed" in table

    # when: the backend fixes the task, and the operator redrives its letter
    cli(
        "dynamodb",
        "update-item",
        "--table-name",
        stack.config.table_name,
        "--key",
        json.dumps({"id": {"S": poison}}),
        "--update-expression",
        "SET details = :d",
        "--expression-attribute-values",
        json.dumps({":d": {"S": "[fake:sleep=0.1]"}}),
    )
    out = json.loads(ok(aipm(stack.workdir, "dlq", "redrive", letter["message_id"], "--json")))
    # then
    assert [(r["task_id"], r["outcome"]) for r in out] == [(poison, "redriven")]
    # (a short lease on a loaded machine may be lost once: the attempt is retried, so count from 3)
    again = wait_until(
        lambda: (r := cli.read(poison)).get("status") == "complete" and r, 60, what=f"{poison} to complete"
    )
    assert again["attempts"] >= 3 and "errorKind" not in again, again
    assert listed(stack) == [] and visible(stack, sqs) == 0


def test_a_redrive_of_a_complete_task_does_not_run_it(stack: Any, cli: AwsCli, sqs: Any) -> None:
    """The letter leaves the DLQ and the output says the task was already complete; the row is as
    it was (no new attempt)."""
    # given: a task that completed, and a letter for it (its duplicate signal ran out of receives)
    done = unique("done")
    cli.put_task(done, f"feature/{done}", details="[fake:sleep=0.1]")
    row = cli.wait_final(done, 60)
    assert row["status"] == "complete", row
    letter_in_dlq(stack, sqs, json.dumps({"taskId": done, "reason": "insert"}))
    # when
    result = aipm(stack.workdir, "dlq", "redrive", "--all")
    # then
    assert "already complete" in ok(result) and "not run again" in result.stdout
    assert listed(stack) == []
    time.sleep(2)  # a run, had one been signalled, would have claimed by now (1 s polls)
    after = cli.read(done)
    assert (after["status"], after["attempts"], after["updatedAt"]) == (
        "complete",
        row["attempts"],
        row["updatedAt"],
    )


def test_a_message_that_is_not_a_task_signal_lands_in_the_dlq_as_such(stack: Any, sqs: Any) -> None:
    """Sent to the task queue, it is left by the runner until its receives run out; the dead-letter
    function files it, and ``dlq list``/``show`` say it is not a task signal; a redrive keeps it
    (exit 1: nothing to run) and ``purge --yes`` removes it."""
    # when
    body = "not json {" + unique("garbage")
    sent = sqs.send_message(QueueUrl=stack.config.task_queue_url, MessageBody=body)["MessageId"]
    # then
    (letter,) = wait_until(lambda: listed(stack) or None, 30, what="the garbage in the DLQ")
    assert (letter["task_id"], letter["verdict"], letter["body"]) == (None, "not_a_task_signal", body)
    assert letter["original_message_id"] == sent and letter["task_status"] is None
    shown = ok(aipm(stack.workdir, "dlq", "show", sent))  # the original id finds it too
    assert "not a task signal" in shown and body in shown
    shown_json = json.loads(ok(aipm(stack.workdir, "dlq", "show", letter["message_id"], "--json")))
    assert shown_json["signal_error"] and shown_json["verdict"] == "not_a_task_signal"

    kept = aipm(stack.workdir, "dlq", "redrive", letter["message_id"])
    assert kept.returncode == 1 and "nothing to run" in kept.stdout + kept.stderr
    assert [x["message_id"] for x in listed(stack)] == [letter["message_id"]]

    refused = aipm(stack.workdir, "dlq", "purge")  # no terminal to ask, no --yes
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert len(listed(stack)) == 1
    purged = json.loads(ok(aipm(stack.workdir, "dlq", "purge", "--yes", "--json")))
    assert purged == {"deleted": [letter["message_id"]]} and listed(stack) == []


def test_bad_input_gets_its_sentence_and_exit_code_and_changes_nothing(
    stack: Any, cli: AwsCli, sqs: Any
) -> None:
    """Unknown message ids (alone, or beside a real one) -> 3; no letters named -> 2; an endpoint
    that is not listening -> 4, naming it; the letter and its failed task are as they were."""
    # given: a failed task and its letter
    failed = unique("failed")
    cli.put_task(failed, f"feature/{failed}", details="[fake:exit=1]")
    assert cli.wait_final(failed, 60)["status"] == "failed"
    real = letter_in_dlq(stack, sqs, json.dumps({"taskId": failed, "reason": "insert"}))
    before = cli.read(failed)

    for args in (("show", "nope"), ("redrive", "nope"), ("redrive", real, "nope")):
        result = aipm(stack.workdir, "dlq", *args)
        assert result.returncode == 3, (args, result.stderr)
        assert "no dead letter with message id 'nope'" in result.stderr and "Traceback" not in result.stderr

    usage = aipm(stack.workdir, "dlq", "redrive")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {
        "AWS_ENDPOINT_URL": closed,
        "DLQ_URL": stack.config.dlq_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    down = aipm(stack.workdir, "dlq", "list", env=env)
    assert down.returncode == 4 and closed in down.stderr and "Traceback" not in down.stderr

    # then: nothing changed
    assert [x["message_id"] for x in listed(stack)] == [real]
    assert cli.read(failed) == before
