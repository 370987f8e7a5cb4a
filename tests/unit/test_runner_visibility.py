"""How long the runner keeps a task's message hidden: its lease plus a margin (VISIBILITY_MARGIN_SECONDS),
so that a dead runner's task is claimable (lease over) by the time its message is visible again."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from ec2_runner.config import RunnerSettings
from ec2_runner.daemon import Runner
from ec2_runner.pipeline import Outcome

pytestmark = pytest.mark.unit

QUEUE = "http://127.0.0.1:1/123456789012/tasks"


def stubbed_sqs(visibility: list[int]) -> tuple[Any, Stubber]:
    """An SQS client that answers from a stub (no network): one message received (hidden for
    ``visibility[0]``), the visibility changes ``visibility[1:]`` in order, then the delete."""
    sqs = boto3.client(
        "sqs", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stub = Stubber(sqs)
    body = json.dumps({"taskId": "t-1", "reason": "insert"})
    stub.add_response(
        "receive_message",
        {"Messages": [{"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": body}]},
        {
            "QueueUrl": QUEUE,
            "MaxNumberOfMessages": 1,
            "WaitTimeSeconds": ANY,
            "VisibilityTimeout": visibility[0],
            "MessageSystemAttributeNames": ANY,
        },
    )
    for seconds in visibility[1:]:
        stub.add_response(
            "change_message_visibility",
            {},
            {"QueueUrl": QUEUE, "ReceiptHandle": "r-1", "VisibilityTimeout": seconds},
        )
    stub.add_response("delete_message", {}, {"QueueUrl": QUEUE, "ReceiptHandle": "r-1"})
    stub.activate()
    return sqs, stub


class ExtendingPipeline:
    """Extends the message's visibility by one lease, as the heartbeat does, and completes."""

    def __init__(self, lease: float) -> None:
        self.lease = lease

    def process(
        self, task_id: str, extend_visibility: Callable[[float], Any], should_stop: Callable[[], bool]
    ) -> Outcome:
        extend_visibility(self.lease)
        return Outcome.COMPLETE


@pytest.mark.parametrize(("margin", "expected"), [(None, 12), (1, 8), (0, 7)])
def test_a_message_is_hidden_for_the_lease_plus_the_margin(margin: int | None, expected: int) -> None:
    # received, hidden again as the task starts, then extended by the heartbeat: each time for the
    # lease and the margin
    sqs, stub = stubbed_sqs([expected, expected, expected])
    extra = {} if margin is None else {"visibility_margin_seconds": margin}
    runner = Runner(sqs, QUEUE, ExtendingPipeline(7), lease_seconds=7, **extra)  # type: ignore[arg-type]
    assert runner.run(max_tasks=1) == 1
    stub.assert_no_pending_responses()
    assert runner.outcomes == {"complete": 1}


def test_a_message_is_received_hidden_for_at_most_thirty_seconds() -> None:
    """A long lease: the receive hides the message for 30 s only (a poll cut off by a stop brings it
    back soon), and the task's start hides it for the whole lease and margin."""
    sqs, stub = stubbed_sqs([30, 125, 125])
    runner = Runner(sqs, QUEUE, ExtendingPipeline(120), lease_seconds=120)  # type: ignore[arg-type]
    assert runner.run(max_tasks=1) == 1
    stub.assert_no_pending_responses()


def test_the_margin_is_a_runner_setting_of_five_seconds_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_QUEUE_URL", QUEUE)
    monkeypatch.setenv("GIT_REMOTE", "/nowhere/remote.git")
    monkeypatch.delenv("VISIBILITY_MARGIN_SECONDS", raising=False)
    assert RunnerSettings().visibility_margin_seconds == 5
    monkeypatch.setenv("VISIBILITY_MARGIN_SECONDS", "1")
    assert RunnerSettings().visibility_margin_seconds == 1
    monkeypatch.setenv("VISIBILITY_MARGIN_SECONDS", "-1")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        RunnerSettings()
