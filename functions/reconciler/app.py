"""Scheduled sweep: re-signal lost pending rows and long-expired leases (status GSI queries only)."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import aws
from shared.config import ReconcilerSettings
from shared.dispatch import Dispatcher
from shared.reconcile import Reconciler
from shared.store import TaskStore

settings = ReconcilerSettings()
logger = Logger(service="aipm-reconciler")
reconciler = Reconciler(
    TaskStore(
        aws.client("dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        settings.table_name,
        branch_locks_table=settings.branch_locks_table,
    ),
    Dispatcher(
        aws.client("sqs", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        settings.task_queue_url,
    ),
    pending_age_seconds=settings.pending_age_seconds,
    stale_lease_seconds=settings.stale_lease_seconds,
)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    report = reconciler.run()
    if report.total:
        logger.warning("re-signalled tasks", pending=report.pending, expired=report.expired)
    return report.model_dump()
