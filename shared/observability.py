"""Logger, Tracer and Metrics of the Lambda functions, configured once from the environment.

Every handler imports these three and stacks their decorators; nothing else makes its own. The
environment is Powertools' own: ``POWERTOOLS_SERVICE_NAME`` (one per function in template.yaml),
``POWERTOOLS_LOG_LEVEL``, ``POWERTOOLS_METRICS_NAMESPACE`` (``aipm`` in the template, ``aipm-local``
on the local stack; ``aipm`` when unset, so a flush never fails for want of one) and
``POWERTOOLS_TRACE_DISABLED`` (Tracer also turns itself off outside Lambda, where there is no X-Ray).

The ``shared`` package logs with the standard library; its loggers get this Logger's handler and
level, so their lines carry the same keys (correlation id, task id, cold start) as the handler's.

In AWS one process runs one function. The local stack runs several in one process: they share these
objects, so their lines carry the service name of the function loaded first (``function_name``
tells them apart), and EMF lines go where the log lines go (see ``_EMFProvider``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.constants import MAX_METRICS

DEFAULT_NAMESPACE = "aipm"
# the WebSocket functions' correlation id: every event of one connection carries it
CONNECTION_ID_PATH = "requestContext.connectionId"

# metric names (Count unless noted); dashboards and alarms use these
TASKS_SIGNALLED = "TasksSignalled"  # dispatch: a signal sent for a row that became pending
PICKUP_LATENCY = "PickupLatency"  # dispatch, Milliseconds: a new row's createdAt to its signal being sent
MALFORMED_RECORDS = "MalformedRecords"  # dispatch, dead letter: a record that can never be a signal
DEAD_LETTERS = "DeadLetters"  # dead letter: a signal received from the dead-letter intake (then filed)
TASKS_GIVEN_UP = "TasksGivenUp"  # dead letter: a row marked failed (errorKind gave_up)
TASKS_RESIGNALLED = "TasksResignalled"  # reconciler (lost signal, expired lease), dead letter (requeue)

__all__ = [
    "CONNECTION_ID_PATH",
    "DEAD_LETTERS",
    "MALFORMED_RECORDS",
    "PICKUP_LATENCY",
    "TASKS_GIVEN_UP",
    "TASKS_RESIGNALLED",
    "TASKS_SIGNALLED",
    "MetricUnit",
    "logger",
    "metrics",
    "tracer",
]


class _EMFProvider(AmazonCloudWatchEMFProvider):
    """Powertools' EMF provider, writing its lines to the stream the Logger writes to.

    Powertools prints EMF to whatever ``sys.stdout`` is at that moment, while its Logger keeps the
    stdout it was made with. In Lambda the two are one stream. The local stack makes its in-process
    Lambdas under a redirected stdout, so their lines go to ``.aipm/logs/lambdas.log`` and its
    console keeps the sentences for people: EMF lines belong with the log lines there too.
    """

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        if not self.metric_set:
            if raise_on_empty_metrics:
                super().flush_metrics(raise_on_empty_metrics)  # Powertools' error
            # else nothing: a batch of quiet records publishes no metric, no cause for a warning
            return
        if is_metrics_disabled():
            return
        self._write(self.serialize_metric_set())
        self.clear_metrics()

    def add_metric(self, name: str, unit: Any, value: float, resolution: Any = 60) -> None:
        values = self.metric_set.get(name, {}).get("Value", [])
        names = len(self.metric_set) + (name not in self.metric_set)
        if names >= MAX_METRICS or len(values) + 1 >= MAX_METRICS:
            # Powertools would publish the full set itself, printing it: publish it here first
            self._write(self.serialize_metric_set())
            self.metric_set.clear()
        super().add_metric(name=name, unit=unit, value=value, resolution=resolution)

    def _write(self, blob: Any) -> None:
        line = json.dumps(blob, separators=(",", ":"))
        stream = getattr(logger.registered_handler, "stream", None)
        if stream is None:  # a Logger given a handler without a stream: Powertools' own way
            print(line)
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError) as e:
            # as with a log line: a stream that cannot take it never fails the function
            print(f"EMF metrics not written: {e!r}", file=sys.stderr)


logger = Logger()
tracer = Tracer()
metrics = Metrics(
    provider=_EMFProvider(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE)
)

# the shared package's standard-library loggers: this Logger's handler, level and keys
logging.getLogger("shared")
copy_config_to_registered_loggers(source_logger=logger, include={"shared"})
