"""Event sources played locally: the DynamoDB stream and SQS mappings, and a schedule.

They apply the template's FilterCriteria, batch as Lambda does, and honour
``batchItemFailures`` (a failed record is delivered again, with everything after it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


# -- FilterCriteria ---------------------------------------------------------------------------
def matches(pattern: Any, value: Any) -> bool:
    """EventBridge-style content filtering, the subset Lambda event filtering supports:
    exact values in lists, nested objects, ``prefix``, ``anything-but``, ``exists``, ``numeric``."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(_match_field(p, value.get(k, _MISSING)) for k, p in pattern.items())
    return _match_field(pattern, value)


_MISSING = object()


def _match_field(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        return value is not _MISSING and matches(pattern, value)
    if not isinstance(pattern, list):
        raise ValueError(f"filter values must be lists, got {pattern!r}")
    for rule in pattern:
        if isinstance(rule, dict):
            if "exists" in rule and (value is not _MISSING) == bool(rule["exists"]):
                return True
            if value is _MISSING:
                continue
            if "prefix" in rule and isinstance(value, str) and value.startswith(rule["prefix"]):
                return True
            if "anything-but" in rule:
                banned = rule["anything-but"]
                banned = banned if isinstance(banned, list) else [banned]
                if value not in banned:
                    return True
            if "numeric" in rule and _numeric(rule["numeric"], value):
                return True
        elif value is not _MISSING and (value == rule or (isinstance(value, list) and rule in value)):
            return True
    return False


def _numeric(ops: list, value: Any) -> bool:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return False
    checks = {"<": x.__lt__, "<=": x.__le__, "=": x.__eq__, ">": x.__gt__, ">=": x.__ge__}
    return all(checks[op](float(v)) for op, v in zip(ops[::2], ops[1::2], strict=True))


def passes(patterns: list[dict], event_record: dict) -> bool:
    """A record passes when any pattern matches (no patterns: everything passes)."""
    return not patterns or any(matches(p, event_record) for p in patterns)


class _Background:
    """One daemon thread running ``_loop`` until ``stop()``; what every local event source shares.
    A stopped source can be started again (as an event source mapping is disabled and enabled)."""

    thread_name = "event-source"
    join_seconds = 5.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.join_seconds)


# -- the DynamoDB stream ----------------------------------------------------------------------
def lambda_stream_record(raw: dict, stream_arn: str, region: str) -> dict:
    """A ``GetRecords`` record in the shape Lambda hands to a stream-triggered function."""
    ddb = dict(raw["dynamodb"])
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, dt.datetime):
        ddb["ApproximateCreationDateTime"] = int(created.timestamp())
    return {
        "eventID": raw["eventID"],
        "eventName": raw["eventName"],
        "eventVersion": raw.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": raw.get("awsRegion", region),
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }


class TableWriteWatch:
    """The writes to one table (``local.motoserver.TABLE_WRITES``, where the server is in this
    process): ``count()`` now, and ``wait(seen, timeout)`` for a write since ``seen``."""

    def __init__(self, table: str) -> None:
        from local.motoserver import TABLE_WRITES

        self.table = table
        self._writes = TABLE_WRITES

    def count(self) -> int:
        return self._writes.count(self.table)

    def wait(self, seen: int, timeout: float) -> bool:
        return self._writes.wait(self.table, seen, timeout)


# how long a stream reader that sees the table's writes waits, with nothing written, before it
# reads the stream anyway (a write made elsewhere, e.g. through another server, is read then)
IDLE_READ_SECONDS = 5.0


class StreamPoller(_Background):
    """Plays the event source mapping of a function on a table's stream."""

    thread_name = "stream-poller"

    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        invoke: Callable[[dict], Any],
        *,
        region: str = "us-east-1",
        filters: list[dict] | None = None,
        batch_size: int = 100,
        max_retries: int = 3,  # -1: retry until stopped, as Lambda does until the record expires
        poll_interval: float = 0.05,
        listeners: list[Callable[[dict], None]] | None = None,
        writes: TableWriteWatch | None = None,
    ) -> None:
        self.streams = streams
        self.stream_arn = stream_arn
        self.invoke = invoke
        self.region = region
        self.filters = filters or []
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.poll_interval = poll_interval
        self.listeners = listeners or []
        # with the table's writes in view (its moto server is in this process), an empty read waits
        # for the next write (or IDLE_READ_SECONDS) instead of reading again after poll_interval
        self.writes = writes
        super().__init__()
        self._iterators: dict[str, str] = {}
        self.delivered = 0

    def start(self, from_start: bool = True) -> None:
        kind = "TRIM_HORIZON" if from_start else "LATEST"
        self._iterators.clear()
        for shard in self._shards():
            self._iterators[shard] = self.streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard, ShardIteratorType=kind
            )["ShardIterator"]
        self._start_thread()

    def _shards(self) -> list[str]:
        desc = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
        return [s["ShardId"] for s in desc.get("Shards", [])]

    def _loop(self) -> None:
        last_shard_check = time.monotonic()
        while not self._stop.is_set():
            busy = False
            seen = self.writes.count() if self.writes else 0
            for shard, iterator in list(self._iterators.items()):
                try:
                    resp = self.streams.get_records(ShardIterator=iterator, Limit=self.batch_size)
                except Exception as e:  # the local AWS went away or hiccupped: keep the position
                    logger.warning("stream read failed (%s); retrying", e)
                    self._stop.wait(1.0)
                    continue
                self._iterators[shard] = resp.get("NextShardIterator") or iterator
                records = resp.get("Records", [])
                if records:
                    busy = True
                    self._deliver([lambda_stream_record(r, self.stream_arn, self.region) for r in records])
            if time.monotonic() - last_shard_check > 10:
                last_shard_check = time.monotonic()
                self._pick_up_new_shards()
            if busy:
                continue
            if self.writes is None:
                self._stop.wait(self.poll_interval)
                continue
            deadline = time.monotonic() + IDLE_READ_SECONDS
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self.writes.wait(seen, 0.25):
                    break

    def _pick_up_new_shards(self) -> None:
        try:
            for shard in self._shards():
                if shard not in self._iterators:
                    self._iterators[shard] = self.streams.get_shard_iterator(
                        StreamArn=self.stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
                    )["ShardIterator"]
        except Exception as e:
            logger.warning("describe_stream failed (%s)", e)

    def _deliver(self, records: list[dict]) -> None:
        for listener in self.listeners:
            for r in records:
                try:
                    listener(r)
                except Exception:
                    logger.exception("stream listener failed")
        batch = [r for r in records if passes(self.filters, r)]
        attempt = 0
        while batch and not self._stop.is_set():
            try:
                result = self.invoke({"Records": batch}) or {}
                failures = [f["itemIdentifier"] for f in result.get("batchItemFailures", [])]
            except Exception:
                logger.exception("stream handler raised; retrying the whole batch")
                failures = [batch[0]["dynamodb"]["SequenceNumber"]]
            if not failures:
                self.delivered += len(batch)
                return
            # as Lambda does: retry from the lowest failed sequence number onwards
            seqs = [r["dynamodb"]["SequenceNumber"] for r in batch]
            first = min((seqs.index(f) for f in failures if f in seqs), default=0)
            self.delivered += first
            batch = batch[first:]
            attempt += 1
            if 0 <= self.max_retries < attempt:
                logger.error("giving up on %d stream records after %d retries", len(batch), self.max_retries)
                return
            self._stop.wait(min(0.2 * 2**attempt, 5))


# -- SQS event source -------------------------------------------------------------------------
def lambda_sqs_record(message: dict, queue_arn: str, region: str) -> dict:
    attrs = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": attrs,
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsPoller(_Background):
    """Plays an SQS event source mapping: long-poll, invoke, delete all but the reported failures."""

    thread_name = "sqs-poller"

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        invoke: Callable[[dict], Any],
        *,
        region: str = "us-east-1",
        batch_size: int = 10,
        wait_seconds: int = 20,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.invoke = invoke
        self.region = region
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.queue_arn = ""
        super().__init__()

    def start(self) -> None:
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self._start_thread()

    def poll_once(self, wait_seconds: int | None = None) -> int:
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        records = [lambda_sqs_record(m, self.queue_arn, self.region) for m in messages]
        try:
            result = self.invoke({"Records": records}) or {}
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        except Exception:
            logger.exception("SQS-triggered handler raised; the batch becomes visible again")
            return 0
        done = [m for m in messages if m["MessageId"] not in failed]
        for m in done:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return len(done)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(wait_seconds=min(self.wait_seconds, 2))
            except Exception as e:
                logger.warning("SQS poll failed (%s); retrying", e)
                self._stop.wait(1.0)


class Schedule(_Background):
    """Plays an EventBridge schedule: calls ``invoke`` with a scheduled event every ``seconds``."""

    thread_name = "schedule"

    def __init__(self, invoke: Callable[[dict], Any], seconds: float, region: str = "us-east-1") -> None:
        self.invoke = invoke
        self.seconds = seconds
        self.region = region
        super().__init__()

    def start(self) -> None:
        self._start_thread()

    def event(self) -> dict:
        return json.loads(
            json.dumps(
                {
                    "version": "0",
                    "id": "local",
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "account": "123456789012",
                    "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "region": self.region,
                    "resources": [],
                    "detail": {},
                }
            )
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.invoke(self.event())
            except Exception:
                logger.exception("scheduled handler failed")
