"""SQS dead-letter queue -> the task is given up: ``failed`` with "gave up after N attempts: ..."."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from shared import aws
from shared.config import DeadLetterSettings
from shared.dispatch import Dispatcher
from shared.models import TaskSignal
from shared.reconcile import give_up
from shared.store import TaskStore

settings = DeadLetterSettings()
logger = Logger(service="aipm-dead-letter")
processor = BatchProcessor(event_type=EventType.SQS)
store = TaskStore(
    aws.client("dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
    settings.table_name,
    branch_locks_table=settings.branch_locks_table,
)
dispatcher = (
    Dispatcher(
        aws.client("sqs", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        settings.task_queue_url,
    )
    if settings.task_queue_url
    else None
)


def record_handler(record: SQSRecord) -> None:
    try:
        signal = TaskSignal.model_validate_json(record.body)
    except ValidationError as e:
        # not a task signal: there is no row to give up, and keeping it would only re-deliver it
        logger.warning(
            "dropping dead letter that is not a task signal",
            message_id=record.message_id,
            body=record.body[:200],
            reason=str(e.errors(include_url=False)[:1]),
        )
        return
    logger.append_keys(task_id=signal.task_id)
    try:
        # a LeaseStillLiveError propagates: the record is reported failed and comes back later
        outcome = give_up(
            store,
            signal.task_id,
            int(record.attributes.approximate_receive_count or 0),
            dispatcher=dispatcher,
            max_receive_count=settings.max_receive_count,
            requeues=signal.requeues,
            max_requeues=settings.max_requeues,
        )
        if outcome.failed:
            logger.warning("task given up", error=outcome.error)
        elif outcome.requeued:
            logger.warning("task signalled afresh", note=outcome.note)
        else:
            logger.info("dead letter needs no change", note=outcome.note)
    finally:
        logger.remove_keys(["task_id"])


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
