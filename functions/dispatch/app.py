"""DynamoDB stream -> SQS: signal the runners when a task becomes pending."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import aws
from shared.config import DispatchSettings
from shared.dispatch import Dispatcher, MalformedRecordError, signal_for

settings = DispatchSettings()
logger = Logger(service="aipm-dispatch")
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
dispatcher = Dispatcher(
    aws.client("sqs", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
    settings.task_queue_url,
)


def record_handler(record: DynamoDBRecord) -> None:
    try:
        stream = record.dynamodb
        signal = signal_for(
            str(record.raw_event.get("eventName")),
            stream.new_image if stream else None,
            stream.old_image if stream else None,
        )
    except (MalformedRecordError, TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as e:
        # a record we can never turn into a signal: retrying it would only block the shard
        logger.warning(
            "skipping malformed stream record", record_id=record.raw_event.get("eventID"), reason=str(e)
        )
        return
    if signal is None:
        return
    logger.append_keys(task_id=signal.taskId)
    message_id = dispatcher.send(signal)
    logger.info("signalled runners", reason=signal.reason, message_id=message_id)
    logger.remove_keys(["task_id"])


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
