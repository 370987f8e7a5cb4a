"""The local stream event source against a real moto stream: partial batch failures are delivered
again from the lowest failed record onwards, as Lambda's event source mapping does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from local.poller import StreamPoller
from tests.fixtures import unique, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def table(ddb: Any) -> Iterator[str]:
    name = unique("poller")
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    yield name
    ddb.delete_table(TableName=name)


class Handler:
    """A stream-triggered function that reports the records whose id is in ``fail`` as failed,
    ``times`` times each, and records every batch it is given."""

    def __init__(self, fail: set[str], times: int) -> None:
        self.fail = fail
        self.left = dict.fromkeys(fail, times)
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict) -> dict:
        ids = [r["dynamodb"]["Keys"]["id"]["S"] for r in event["Records"]]
        failures = []
        with self.lock:
            self.batches.append(ids)
            for r, task_id in zip(event["Records"], ids, strict=True):
                if self.left.get(task_id, 0) > 0:
                    self.left[task_id] -= 1
                    failures.append({"itemIdentifier": r["dynamodb"]["SequenceNumber"]})
        return {"batchItemFailures": failures}


def _poller(moto_endpoint: str, ddb: Any, table: str, handler: Handler, max_retries: int) -> StreamPoller:
    from shared import aws

    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = aws.client("dynamodbstreams", region="us-east-1", endpoint_url=moto_endpoint)
    return StreamPoller(streams, arn, handler, batch_size=10, max_retries=max_retries, poll_interval=0.02)


def _put(ddb: Any, table: str, ids: list[str]) -> None:
    for task_id in ids:
        ddb.put_item(TableName=table, Item={"id": {"S": task_id}})


def test_a_failed_record_is_delivered_again_with_the_records_after_it(
    moto_endpoint: str, ddb: Any, table: str
) -> None:
    # given: five records in one batch, the third reported failed once
    ids = ["r1", "r2", "r3", "r4", "r5"]
    _put(ddb, table, ids)
    handler = Handler({"r3"}, times=1)
    poller = _poller(moto_endpoint, ddb, table, handler, max_retries=3)
    # when
    poller.start(from_start=True)
    try:
        wait_until(lambda: poller.delivered == 5, 10, what="every record delivered")
    finally:
        poller.stop()
    # then: the retry starts at r3, never re-delivers r1 and r2
    assert handler.batches == [ids, ["r3", "r4", "r5"]]


def test_a_record_that_keeps_failing_is_given_up_after_the_mappings_retries(
    moto_endpoint: str, ddb: Any, table: str
) -> None:
    _put(ddb, table, ["p1", "p2"])
    handler = Handler({"p1"}, times=100)
    poller = _poller(moto_endpoint, ddb, table, handler, max_retries=2)
    poller.start(from_start=True)
    try:
        wait_until(lambda: len(handler.batches) >= 3, 10, what="the retries")
        # later records flow once the poison batch is given up
        _put(ddb, table, ["after"])
        wait_until(lambda: ["after"] in handler.batches, 10, what="the next record")
    finally:
        poller.stop()
    # the first delivery and max_retries more, then the stream moves on
    assert handler.batches[:3] == [["p1", "p2"]] * 3
    assert handler.batches[3:] == [["after"]]
