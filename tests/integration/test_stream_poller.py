"""The local stream event source against a real moto stream: partial batch failures are delivered
again from the lowest failed record onwards, as Lambda's event source mapping does."""

from __future__ import annotations

import threading
import time
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


def test_a_stopped_poller_starts_again_from_the_streams_end(moto_endpoint: str, ddb: Any, table: str) -> None:
    """As an event source mapping disabled and enabled again: what was written meanwhile is not
    delivered (its signal is lost, for the reconciler), what comes after is."""
    handler = Handler(set(), times=0)
    poller = _poller(moto_endpoint, ddb, table, handler, max_retries=3)
    poller.start(from_start=True)
    try:
        _put(ddb, table, ["before"])
        wait_until(lambda: poller.delivered == 1, 10, what="the first record delivered")
        poller.stop()
        _put(ddb, table, ["while-stopped"])
        poller.start(from_start=False)
        _put(ddb, table, ["after"])
        wait_until(lambda: poller.delivered == 2, 10, what="the record after the restart delivered")
    finally:
        poller.stop()
    assert [i for batch in handler.batches for i in batch] == ["before", "after"]


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


class Arrivals:
    """A stream-triggered function that notes when each id first arrived."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()

    def __call__(self, event: dict) -> dict:
        with self.cond:
            for r in event["Records"]:
                self.seen.setdefault(r["dynamodb"]["Keys"]["id"]["S"], time.monotonic())
            self.cond.notify_all()
        return {"batchItemFailures": []}

    def wait_for(self, task_id: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: task_id in self.seen, timeout)
            return self.seen.get(task_id)


def test_records_keep_flowing_after_a_cancelled_transaction(
    moto_endpoint: str, ddb: Any, deployed: Any
) -> None:
    """A claim refused by its branch lock is a cancelled TransactWriteItems, after which moto puts
    back a copy of its tables; the poller must follow the live stream, not the replaced one: a task
    on another branch still arrives in well under a second, a hundred times in a row."""
    from shared import aws
    from shared.store import BranchBusyError, TaskStore

    # given: one task holding branch feature/shared, and the poller on the queue table's stream
    store = TaskStore(ddb, deployed.table_name, branch_locks_table=deployed.branch_locks_table)
    holder = unique("holder")
    store.put_new({"id": holder, "title": "t", "details": "", "branch": "feature/shared"})
    store.claim(holder, "runner-a", 300)
    arn = ddb.describe_table(TableName=deployed.table_name)["Table"]["LatestStreamArn"]
    streams = aws.client("dynamodbstreams", region="us-east-1", endpoint_url=moto_endpoint)
    arrivals = Arrivals()
    poller = StreamPoller(streams, arn, arrivals, batch_size=100, poll_interval=0.02)
    poller.start(from_start=False)
    slow: list[tuple[int, float | None]] = []
    try:
        for i in range(100):
            # when: a second task of the busy branch is refused (a cancelled transaction) ...
            waiter = unique(f"waiter{i}")
            store.put_new({"id": waiter, "title": "t", "details": "", "branch": "feature/shared"})
            with pytest.raises(BranchBusyError):
                store.claim(waiter, "runner-b", 300)
            # ... and a task on another branch is inserted
            other = unique(f"other{i}")
            sent = time.monotonic()
            store.put_new({"id": other, "title": "t", "details": "", "branch": f"feature/other-{i}"})
            arrived = arrivals.wait_for(other, 2.0)
            took = None if arrived is None else arrived - sent
            if took is None or took > 0.5:
                slow.append((i, took))
                if len(slow) == 3:
                    break
    finally:
        poller.stop()
    # then: every one of them reached the stream's function promptly
    assert slow == [], f"records late or lost after a cancelled transaction (round, seconds): {slow[:5]}"


def test_the_local_stacks_stream_is_read_at_its_poll_interval_and_still_delivers(
    moto_endpoint: str, tmp_path: Any
) -> None:
    """The stack's stream poll interval is a setting (the test stacks read the stream every 0.2 s: a
    50 ms poll costs ~8 % of a core per idle stack); rows still reach dispatch and the queue."""
    from local.stack import LocalStack
    from shared import aws

    stack = LocalStack(
        tmp_path, runners=0, stack_name=unique("poll"), endpoint_url=moto_endpoint, stream_poll_seconds=0.2
    )
    config = stack.start()
    try:
        assert stack.stream is not None and stack.stream.poll_interval == 0.2
        sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
        stack_store = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
        task_id = unique("polled")
        stack_store.put_item(
            TableName=config.table_name,
            Item={
                "id": {"S": task_id},
                "title": {"S": "t"},
                "details": {"S": "d"},
                "branch": {"S": f"feature/{task_id}"},
                "status": {"S": "pending"},
                "createdAt": {"S": "2026-01-01T00:00:00.000Z"},
                "updatedAt": {"S": "2026-01-01T00:00:00.000Z"},
            },
        )
        got = wait_until(
            lambda: sqs.receive_message(QueueUrl=config.task_queue_url, WaitTimeSeconds=1).get("Messages"),
            30,
            what="the row's signal in the task queue",
        )
        assert task_id in got[0]["Body"]
    finally:
        stack.stop()
    assert LocalStack(tmp_path / "default").stream_poll_seconds == 0.05  # what `aipm local up` uses
