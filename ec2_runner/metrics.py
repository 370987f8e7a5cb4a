"""The runner's metrics, as CloudWatch embedded metric format (EMF) lines among its log lines.

One EMF document per task attempt that ended (complete, failed, given back): its duration, the
agent's time, the push's time and (first attempts) the pick-up latency from the row's ``createdAt``;
and one per failure, with the row's ``errorKind`` as a dimension. Powertools' EMF provider builds
and checks each document (it works outside Lambda); the runner's log handlers write it as a line of
its own (``ec2_runner.logs``), so on EC2 the CloudWatch agent ships it with the JSON log lines to the
runner's log group, where CloudWatch Logs extracts the metrics. Namespace ``aipm`` (as the
functions'; ``POWERTOOLS_METRICS_NAMESPACE`` changes it), dimension ``service`` = ``aipm-runner``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

logger = logging.getLogger(__name__)

SERVICE = "aipm-runner"
DEFAULT_NAMESPACE = "aipm"
# metric names; the dashboard (template.yaml) and README use these
TASK_DURATION = "TaskDuration"  # Milliseconds: the claim to the row's final write (or its release)
AGENT_TIME = "AgentTime"  # Milliseconds: the agent's run
PUSH_TIME = "PushTime"  # Milliseconds: the push to the task's branch
PICKUP_LATENCY = "PickupLatency"  # Milliseconds: the row's createdAt to its first claim
TASKS_COMPLETED = "TasksCompleted"  # Count
TASKS_RELEASED = "TasksReleased"  # Count: given back as pending (a stop), their work on a WIP ref
TASK_FAILURES = "TaskFailures"  # Count, by errorKind (a dimension)
ERROR_KIND = "errorKind"


def namespace() -> str:
    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE


@dataclass
class TaskMeasures:
    """What one claimed attempt measured; the pipeline fills it in as the attempt goes."""

    task_id: str
    attempt: int
    claimed: float = field(default_factory=time.monotonic)
    pickup_ms: float | None = None
    agent_ms: float | None = None
    push_ms: float | None = None
    error_kind: str | None = None


def pickup_ms(created_at: str | None, now: float | None = None) -> float | None:
    """Milliseconds from an ISO 8601 ``createdAt`` to now (never negative); None if it is not one."""
    if not created_at:
        return None
    try:
        at = dt.datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return max(0.0, ((time.time() if now is None else now) - at.timestamp()) * 1000)


def emit_attempt(measures: TaskMeasures, outcome: str) -> None:
    """The attempt's EMF document (and its failure's, by errorKind), as log lines."""
    emf = AmazonCloudWatchEMFProvider(namespace=namespace(), service=SERVICE)
    emf.add_metric(
        name=TASK_DURATION, unit=MetricUnit.Milliseconds, value=(time.monotonic() - measures.claimed) * 1000
    )
    for name, value in (
        (AGENT_TIME, measures.agent_ms),
        (PUSH_TIME, measures.push_ms),
        (PICKUP_LATENCY, measures.pickup_ms),
    ):
        if value is not None:
            emf.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)
    if outcome == "complete":
        emf.add_metric(name=TASKS_COMPLETED, unit=MetricUnit.Count, value=1)
    elif outcome == "released":
        emf.add_metric(name=TASKS_RELEASED, unit=MetricUnit.Count, value=1)
    _metadata(emf, measures.task_id, outcome=outcome, attempt=measures.attempt)
    _write(emf)
    if measures.error_kind:
        emit_failure(measures.task_id, measures.error_kind)


def emit_failure(task_id: str, error_kind: str) -> None:
    """One failed task, counted by its ``errorKind``."""
    emf = AmazonCloudWatchEMFProvider(namespace=namespace(), service=SERVICE)
    emf.add_dimension(name=ERROR_KIND, value=error_kind)
    emf.add_metric(name=TASK_FAILURES, unit=MetricUnit.Count, value=1)
    _metadata(emf, task_id)
    _write(emf)


def _metadata(emf: AmazonCloudWatchEMFProvider, task_id: str, **more: object) -> None:
    # properties of the document, searchable in Logs Insights; never dimensions (one per task)
    emf.add_metadata(key="task_id", value=task_id)
    for key, value in more.items():
        emf.add_metadata(key=key, value=value)


def _write(emf: AmazonCloudWatchEMFProvider) -> None:
    try:
        document = emf.serialize_metric_set()
    except Exception as e:  # a metric is never worth a task: say so and go on
        logger.warning("EMF metrics not written: %s", e)
        return
    logger.info("metrics", extra={"emf": document})
