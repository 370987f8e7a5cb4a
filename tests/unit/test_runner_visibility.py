"""How long the runner keeps a task's message hidden: its lease plus a margin (VISIBILITY_MARGIN_SECONDS),
so that a dead runner's task is claimable (lease over) by the time its message is visible again."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from ec2_runner.config import RunnerSettings
from ec2_runner.daemon import Runner
from ec2_runner.pipeline import Outcome

pytestmark = pytest.mark.unit

QUEUE = "http://127.0.0.1:1/123456789012/tasks"


def stubbed_sqs(visibility: list[int]) -> tuple[Any, Stubber]:
    """An SQS client that answers from a stub (no network): the visibility changes it expects, in
    order, then the delete."""
    sqs = boto3.client(
        "sqs", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stub = Stubber(sqs)
    for seconds in visibility:
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


def handle_one(runner: Runner) -> None:
    runner._handle({"ReceiptHandle": "r-1", "MessageId": "m-1", "Body": json.dumps({"taskId": "t-1"})})


@pytest.mark.parametrize(("margin", "expected"), [(None, 12), (1, 8), (0, 7)])
def test_a_message_is_hidden_for_the_lease_plus_the_margin(margin: int | None, expected: int) -> None:
    # hidden as the task starts, then extended by the heartbeat: both for a lease and the margin
    sqs, stub = stubbed_sqs([expected, expected])
    extra = {} if margin is None else {"visibility_margin_seconds": margin}
    runner = Runner(sqs, QUEUE, ExtendingPipeline(7), lease_seconds=7, **extra)  # type: ignore[arg-type]
    handle_one(runner)
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
