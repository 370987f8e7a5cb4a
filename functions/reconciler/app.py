"""Scheduled sweep: re-signal lost pending rows and long-expired leases (status GSI queries only)."""

from __future__ import annotations

from functools import cache

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared import wiring
from shared.config import ReconcilerSettings
from shared.observability import TASKS_RESIGNALLED, MetricUnit, logger, metrics, tracer
from shared.reconcile import Reconciler


@cache
def settings() -> ReconcilerSettings:
    return ReconcilerSettings()


@cache
def reconciler() -> Reconciler:
    """Made on the first run, once per process."""
    s = settings()
    return Reconciler(
        wiring.task_store(s),
        wiring.required_dispatcher(s),
        pending_age_seconds=s.pending_age_seconds,
        stale_lease_seconds=s.stale_lease_seconds,
    )


def reset() -> None:
    """Forget settings and clients: the next event reads the environment afresh (tests)."""
    settings.cache_clear()
    reconciler.cache_clear()


settings()  # the environment is validated as the function starts


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict:
    report = reconciler().run()
    metrics.add_metric(name=TASKS_RESIGNALLED, unit=MetricUnit.Count, value=report.total)
    if report.total:
        logger.warning(
            "re-signalled tasks", pending=report.pending, expired=report.expired, scheduled=event.time
        )
    return report.model_dump()
