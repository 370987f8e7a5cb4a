"""DynamoDB stream -> SQS: signal the runners when a task becomes pending."""

from __future__ import annotations

import datetime as dt
import time
from functools import cache

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import wiring
from shared.config import DispatchSettings
from shared.dispatch import Dispatcher, MalformedRecordError, needs_created_at, signal_for
from shared.models import TaskSignal
from shared.observability import (
    MALFORMED_RECORDS,
    PICKUP_LATENCY,
    TASKS_SIGNALLED,
    MetricUnit,
    logger,
    metrics,
    tracer,
)
from shared.reconcile import iso_at
from shared.store import TaskStore

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@cache
def settings() -> DispatchSettings:
    return DispatchSettings()


@cache
def dispatcher() -> Dispatcher:
    """Made on the first record, once per process."""
    return wiring.required_dispatcher(settings())


@cache
def store() -> TaskStore:
    """Made on the first record, once per process."""
    return wiring.task_store(settings())


def reset() -> None:
    """Forget settings and clients: the next event reads the environment afresh (tests)."""
    for getter in (settings, dispatcher, store):
        getter.cache_clear()


settings()  # the environment is validated as the function starts


def record_handler(record: DynamoDBRecord) -> None:
    try:
        stream = record.dynamodb
        new_image = stream.new_image if stream else None
        signal = signal_for(
            str(record.raw_event.get("eventName")), new_image, stream.old_image if stream else None
        )
    except (MalformedRecordError, TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as e:
        # a record we can never turn into a signal: retrying it would only block the shard
        logger.warning(
            "skipping malformed stream record", record_id=record.raw_event.get("eventID"), reason=str(e)
        )
        metrics.add_metric(name=MALFORMED_RECORDS, unit=MetricUnit.Count, value=1)
        return
    if signal is None:
        return
    with logger.append_context_keys(correlation_id=signal.task_id, task_id=signal.task_id):
        _signal(record, signal, new_image)


def _signal(record: DynamoDBRecord, signal: TaskSignal, new_image: dict | None) -> None:
    if needs_created_at(new_image):
        # before the signal: a lost signal is then recovered by the reconciler from the index
        written = _record_time(record)
        if store().stamp_created(signal.task_id, written):
            logger.info("row had no createdAt; gave it its stream record's time", created_at=written)
    message_id = dispatcher().send(signal)
    logger.info("signalled runners", reason=signal.reason, message_id=message_id)
    metrics.add_metric(name=TASKS_SIGNALLED, unit=MetricUnit.Count, value=1)
    if record.raw_event.get("eventName") == "INSERT":
        # a row reset to pending keeps its createdAt: its age says nothing about this pick-up
        latency = _ms_since((new_image or {}).get("createdAt") or _record_time(record))
        if latency is not None:
            metrics.add_metric(name=PICKUP_LATENCY, unit=MetricUnit.Milliseconds, value=latency)


def _record_time(record: DynamoDBRecord) -> str:
    """When the write happened, from the record (epoch seconds), else now."""
    stamp = record.dynamodb.approximate_creation_date_time if record.dynamodb else None
    return iso_at(float(stamp) if isinstance(stamp, int | float) else time.time())


def _ms_since(timestamp: object) -> float | None:
    """Milliseconds from an ISO 8601 timestamp to now (never negative); None if it is not one."""
    try:
        at = dt.datetime.fromisoformat(str(timestamp))
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return max(0.0, (time.time() - at.timestamp()) * 1000)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
