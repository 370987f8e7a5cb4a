"""What the Lambdas are made of, built one way from their settings: the task store and the dispatcher.

Each function keeps its own cached getters (the local stack loads every function with its own
environment); the getters call these, so a client is configured in one place.
"""

from __future__ import annotations

from shared import aws
from shared.config import AwsSettings, DeadLetterSettings
from shared.dead_letters import LetterFiler
from shared.dispatch import Dispatcher
from shared.store import TaskStore


def task_store(settings: AwsSettings) -> TaskStore:
    """The queue table and its branch locks, through one DynamoDB client."""
    return TaskStore(
        aws.client("dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        settings.table_name,
        branch_locks_table=settings.branch_locks_table,
    )


def dispatcher(settings: AwsSettings) -> Dispatcher | None:
    """The task queue's signaller; None where no queue is configured."""
    if not settings.task_queue_url:
        return None
    return Dispatcher(
        aws.client("sqs", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        settings.task_queue_url,
    )


def required_dispatcher(settings: AwsSettings) -> Dispatcher:
    """The dispatcher of a function whose settings require TASK_QUEUE_URL."""
    made = dispatcher(settings)
    if made is None:
        raise ValueError("TASK_QUEUE_URL is not set: this function signals the task queue and needs it")
    return made


def letter_filer(settings: DeadLetterSettings) -> LetterFiler:
    """Where the dead-letter function files the letters operators inspect (DLQ_URL)."""
    return LetterFiler(
        aws.client("sqs", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        settings.dlq_url,
    )
