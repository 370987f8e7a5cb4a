"""The real dispatch handler (functions/dispatch/app.py) against a stack deployed from template.yaml."""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local.deploy import LocalStackResources
from shared import aws
from tests.integration.conftest import emf_metrics, load_event

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


def test_signals_and_their_pick_up_latency_are_published_as_emf(
    fresh_stack: LocalStackResources,
    load_handler: Any,
    lambda_context: Any,
    moto_endpoint: str,
    lambda_stdout: pytest.CaptureFixture[str],
) -> None:
    """One EMF line per invocation in the function's output: TasksSignalled counts the signals sent,
    PickupLatency is a new row's age (its createdAt to its signal) in milliseconds; a row reset to
    pending is counted but has no pick-up latency (its createdAt is when it was first made)."""
    # given a row inserted two seconds ago, and a row reset to pending
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    insert = load_event("stream_insert.json")["Records"][0]
    insert["dynamodb"]["NewImage"]["createdAt"] = {"S": created.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
    reset = load_event("stream_modify_reset.json")["Records"][0]
    app = load_handler("dispatch", fresh_stack)
    lambda_stdout.readouterr()

    # when
    assert app.lambda_handler({"Records": [insert, reset]}, lambda_context) == {"batchItemFailures": []}
    age_ms = (time.time() - created.timestamp()) * 1000

    # then
    out = lambda_stdout.readouterr().out
    emf = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    assert len(emf) == 1
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "aipm"
    metrics = emf_metrics(out)
    assert metrics["TasksSignalled"] == [1.0, 1.0]
    [latency] = metrics["PickupLatency"]
    assert 2000 <= latency <= age_ms + 1  # createdAt is written to the millisecond
    units = {m["Name"]: m["Unit"] for m in emf[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"TasksSignalled": "Count", "PickupLatency": "Milliseconds"}


def test_malformed_records_are_counted(
    fresh_stack: LocalStackResources,
    load_handler: Any,
    lambda_context: Any,
    lambda_stdout: pytest.CaptureFixture[str],
) -> None:
    """stream_malformed.json's skipped records each count one MalformedRecords; its good one signals."""
    event = load_event("stream_malformed.json")
    app = load_handler("dispatch", fresh_stack)
    lambda_stdout.readouterr()

    app.lambda_handler(event, lambda_context)

    metrics = emf_metrics(lambda_stdout.readouterr().out)
    assert metrics["MalformedRecords"] == [1.0] * (len(event["Records"]) - 1)
    assert metrics["TasksSignalled"] == [1.0]


def test_a_batch_with_nothing_to_signal_publishes_no_metrics(
    fresh_stack: LocalStackResources,
    load_handler: Any,
    lambda_context: Any,
    lambda_stdout: pytest.CaptureFixture[str],
) -> None:
    """A runner's own transitions are quiet: no EMF line, and no warning either."""
    app = load_handler("dispatch", fresh_stack)
    lambda_stdout.readouterr()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.lambda_handler(load_event("stream_modify_processing.json"), lambda_context)

    assert emf_metrics(lambda_stdout.readouterr().out) == {}
