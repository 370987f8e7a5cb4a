"""The real dispatch handler (functions/dispatch/app.py) against a stack deployed from template.yaml."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local.deploy import LocalStackResources
from shared import aws
from tests.integration.conftest import load_event

pytestmark = pytest.mark.integration

TASK_ID = "3f6c1c8e-2b7a-4d0e-9a51-7c2f0d4e8a10"


def drain(queue_url: str, endpoint: str) -> list[dict[str, Any]]:
    """Every message now in the queue, as parsed bodies."""
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=endpoint)
    bodies: list[dict[str, Any]] = []
    while True:
        msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not msgs:
            return bodies
        for m in msgs:
            bodies.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def test_insert_sends_one_signal_with_task_id_and_reason(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """stream_insert.json (a pending row) -> exactly one SQS message {"taskId", "reason"}."""
    app = load_handler("dispatch", fresh_stack)

    result = app.lambda_handler(load_event("stream_insert.json"), lambda_context)

    assert result == {"batchItemFailures": []}
    assert drain(fresh_stack.task_queue_url, moto_endpoint) == [{"taskId": TASK_ID, "reason": "insert"}]


def test_reset_to_pending_signals_again(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    app = load_handler("dispatch", fresh_stack)

    result = app.lambda_handler(load_event("stream_modify_reset.json"), lambda_context)

    assert result == {"batchItemFailures": []}
    assert drain(fresh_stack.task_queue_url, moto_endpoint) == [
        {"taskId": TASK_ID, "reason": "reset from failed"}
    ]


def test_claim_by_a_runner_is_quiet(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """pending -> processing must not signal (it would make runners chase their own claims)."""
    app = load_handler("dispatch", fresh_stack)

    result = app.lambda_handler(load_event("stream_modify_processing.json"), lambda_context)

    assert result == {"batchItemFailures": []}
    assert drain(fresh_stack.task_queue_url, moto_endpoint) == []


def test_malformed_records_are_skipped_and_the_good_one_is_signalled(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """No NewImage, no id, unknown eventName: skipped without failing the batch."""
    app = load_handler("dispatch", fresh_stack)

    result = app.lambda_handler(load_event("stream_malformed.json"), lambda_context)

    assert result == {"batchItemFailures": []}
    assert drain(fresh_stack.task_queue_url, moto_endpoint) == [{"taskId": TASK_ID, "reason": "insert"}]


def test_sqs_failure_reports_that_records_sequence_number(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """A signal that cannot be sent is a batch item failure, so Lambda retries it; the quiet
    record of the same batch succeeds."""
    # given a batch of a quiet record and a signal, and a task queue that no longer exists
    quiet = load_event("stream_modify_processing.json")["Records"][0]
    signal = load_event("stream_insert.json")["Records"][0]
    app = load_handler("dispatch", fresh_stack)
    aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint).delete_queue(
        QueueUrl=fresh_stack.task_queue_url
    )

    # when
    result = app.lambda_handler({"Records": [quiet, signal]}, lambda_context)

    # then
    assert result == {"batchItemFailures": [{"itemIdentifier": signal["dynamodb"]["SequenceNumber"]}]}


def test_whole_batch_failing_raises_so_lambda_retries_it(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """When every record fails, Powertools raises instead of listing them all (Lambda retries the batch)."""
    app = load_handler("dispatch", fresh_stack)
    aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint).delete_queue(
        QueueUrl=fresh_stack.task_queue_url
    )

    with pytest.raises(BatchProcessingError):
        app.lambda_handler(load_event("stream_insert.json"), lambda_context)


def test_a_pending_row_without_created_at_gets_the_stream_records_time(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """A row without ``createdAt`` is not in the status index (in AWS too): dispatch gives it the
    time of its stream record, so listings and the reconciler can see it, and still signals it."""
    from shared.dispatch import Dispatcher
    from shared.reconcile import Reconciler, iso_at
    from shared.store import TaskStore

    # given: the backend inserted a row without createdAt
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    event = load_event("stream_insert.json")
    image = event["Records"][0]["dynamodb"]["NewImage"]
    del image["createdAt"]
    ddb.put_item(TableName=fresh_stack.table_name, Item=image)
    app = load_handler("dispatch", fresh_stack)

    # when
    result = app.lambda_handler(event, lambda_context)

    # then: signalled, and the row carries the record's time as its createdAt
    assert result == {"batchItemFailures": []}
    assert drain(fresh_stack.task_queue_url, moto_endpoint) == [{"taskId": TASK_ID, "reason": "insert"}]
    stamped = ddb.get_item(TableName=fresh_stack.table_name, Key={"id": {"S": TASK_ID}}, ConsistentRead=True)
    assert stamped["Item"]["createdAt"] == {"S": iso_at(1736937000)}
    # and when that signal is lost, the reconciler finds the row through the status index
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
    store = TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table)
    report = Reconciler(store, Dispatcher(sqs, fresh_stack.task_queue_url)).run()
    assert report.pending == [TASK_ID]


def test_dispatch_never_overwrites_a_created_at_the_row_has(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """The record's image may lack createdAt while the row has one by now (written since): the
    row's own value stays."""
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    event = load_event("stream_insert.json")
    image = event["Records"][0]["dynamodb"]["NewImage"]
    ddb.put_item(TableName=fresh_stack.table_name, Item=image)
    del image["createdAt"]
    app = load_handler("dispatch", fresh_stack)

    assert app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}

    row = ddb.get_item(TableName=fresh_stack.table_name, Key={"id": {"S": TASK_ID}}, ConsistentRead=True)
    assert row["Item"]["createdAt"] == {"S": "2025-01-15T10:30:00.000Z"}
