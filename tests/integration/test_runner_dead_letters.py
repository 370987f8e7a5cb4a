"""A message that is not a task signal is left for the dead-letter queue by the runner (never
deleted, never run, never made to wait for a slot of its own), on moto's SQS with the template's
redrive."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ec2_runner.daemon import Runner
from ec2_runner.pipeline import Outcome
from tests.fixtures import unique

pytestmark = pytest.mark.integration


class RefusingPipeline:
    """A pipeline the runner must not reach: a body that names no task has nothing to run."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def process(self, task_id: str, **_: Any) -> Outcome:
        self.calls.append(task_id)
        return Outcome.NOT_CLAIMABLE


def test_a_body_that_is_not_a_task_signal_goes_to_the_dead_letter_intake(deployed: Any, sqs: Any) -> None:
    # given: the template's queues (maxReceiveCount 5), and a body no task signal can be
    body = "not json {" + unique("garbage")
    sent = sqs.send_message(QueueUrl=deployed.task_queue_url, MessageBody=body)["MessageId"]
    pipeline = RefusingPipeline()
    runner = Runner(sqs, deployed.task_queue_url, pipeline, wait_time_seconds=1)  # type: ignore[arg-type]
    # when: the runner serves until the queue is empty (again, should a loaded machine leave a receive
    # empty while the body was being made visible again)
    handled, deadline = 0, time.monotonic() + 30
    while handled < 5 and time.monotonic() < deadline:
        handled = runner.run(max_tasks=10, stop_when_idle=True)  # the runner's count so far
    # then: received once per allowed receive, never run, and now in the intake as it was sent
    assert handled == 5 and pipeline.calls == []
    assert sqs.receive_message(QueueUrl=deployed.task_queue_url, WaitTimeSeconds=0).get("Messages", []) == []
    (dead,) = sqs.receive_message(QueueUrl=deployed.dlq_intake_url, WaitTimeSeconds=1)["Messages"]
    assert (dead["MessageId"], dead["Body"]) == (sent, body)
