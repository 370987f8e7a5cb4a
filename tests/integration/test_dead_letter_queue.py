"""Reading the dead-letter queue loses nothing (moto's SQS over HTTP): every letter is read, more
than one receive's worth, and every one not deleted is visible again, also when the reader fails."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.dead_letters import DeadLetterQueue, Verdict, file_letter
from tests.fixtures import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def dlq(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName=unique("dlq"))["QueueUrl"])


def visible(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def test_every_letter_is_read_and_put_back(sqs: Any, dlq: str) -> None:
    # given: 25 letters (a receive brings 10 at most)
    for i in range(25):
        sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"taskId": f"t-{i}"}))
    queue = DeadLetterQueue(sqs, dlq)
    # when
    with queue.held() as held:
        during = visible(sqs, dlq)
    # then
    assert sorted(h.letter.task_id or "" for h in held) == sorted(f"t-{i}" for i in range(25))
    assert during == 0 and visible(sqs, dlq) == 25


def test_letters_are_put_back_when_the_reader_fails_and_deleted_ones_are_gone(sqs: Any, dlq: str) -> None:
    for i in range(3):
        sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"taskId": f"t-{i}"}))
    queue = DeadLetterQueue(sqs, dlq)

    with pytest.raises(RuntimeError), queue.held() as held:
        queue.delete(held[0])
        raise RuntimeError("the operator's command failed half way")

    with queue.held() as again:
        left = {h.letter.task_id for h in again}
    assert left == {h.letter.task_id for h in held[1:]} and len(left) == 2


def test_a_filed_letter_reads_back_with_what_the_function_found(sqs: Any, dlq: str) -> None:
    body = json.dumps({"taskId": "t-9", "reason": "insert"})
    file_letter(
        sqs,
        dlq,
        body=body,
        original_message_id="orig-1",
        sent_timestamp=1_736_937_000_000,
        receive_count=3,
        verdict=Verdict.GAVE_UP,
        note="gave up after 3 attempts: agent exited with code 1",
    )
    with DeadLetterQueue(sqs, dlq).held() as held:
        (letter,) = [h.letter for h in held]
    assert (letter.task_id, letter.verdict, letter.receive_count) == ("t-9", Verdict.GAVE_UP, 3)
    assert letter.first_sent == "2025-01-15T10:30:00.000Z" and letter.body == body
    assert letter.matches("orig-1") and letter.matches(letter.message_id) and not letter.matches("x")
    assert letter.note.startswith("gave up after 3 attempts")
