"""DynamoDB stream -> SQS: signal the runners when a task becomes pending."""

from __future__ import annotations

import time

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import aws
from shared.config import DispatchSettings
from shared.dispatch import Dispatcher, MalformedRecordError, needs_created_at, signal_for
from shared.reconcile import iso_at
from shared.store import TaskStore

settings = DispatchSettings()
logger = Logger(service="aipm-dispatch")
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
dispatcher = Dispatcher(
    aws.client("sqs", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
    settings.task_queue_url,
)
store = TaskStore(
    aws.client("dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
    settings.table_name,
    branch_locks_table=settings.branch_locks_table,
)


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
        return
    if signal is None:
        return
    logger.append_keys(task_id=signal.task_id)
    try:
        if needs_created_at(new_image):
            # before the signal: a lost signal is then recovered by the reconciler from the index
            written = _record_time(record)
            if store.stamp_created(signal.task_id, written):
                logger.info("row had no createdAt; gave it its stream record's time", created_at=written)
        message_id = dispatcher.send(signal)
        logger.info("signalled runners", reason=signal.reason, message_id=message_id)
    finally:
        logger.remove_keys(["task_id"])


def _record_time(record: DynamoDBRecord) -> str:
    """When the write happened, from the record (epoch seconds), else now."""
    stamp = record.dynamodb.approximate_creation_date_time if record.dynamodb else None
    return iso_at(float(stamp) if isinstance(stamp, int | float) else time.time())


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
