"""SQS dead-letter intake -> the task is given up (``failed`` with "gave up after N attempts: ...")
and the letter is filed in the dead-letter queue, where it stays for operators (``aipm dlq``)."""

from __future__ import annotations

from functools import cache

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from shared import wiring
from shared.config import DeadLetterSettings
from shared.dead_letters import LetterFiler, Verdict
from shared.dispatch import Dispatcher
from shared.models import TaskSignal
from shared.observability import (
    DEAD_LETTERS,
    MALFORMED_RECORDS,
    TASKS_GIVEN_UP,
    TASKS_RESIGNALLED,
    MetricUnit,
    logger,
    metrics,
    tracer,
)
from shared.reconcile import give_up
from shared.store import TaskStore

processor = BatchProcessor(event_type=EventType.SQS)


@cache
def settings() -> DeadLetterSettings:
    return DeadLetterSettings()


@cache
def store() -> TaskStore:
    """Made on the first record, once per process."""
    return wiring.task_store(settings())


@cache
def dispatcher() -> Dispatcher | None:
    """Made on the first record, once per process; None without a task queue to signal afresh."""
    return wiring.dispatcher(settings())


@cache
def filer() -> LetterFiler:
    """Made on the first record, once per process."""
    return wiring.letter_filer(settings())


def reset() -> None:
    """Forget settings and clients: the next event reads the environment afresh (tests)."""
    for getter in (settings, store, dispatcher, filer):
        getter.cache_clear()


settings()  # the environment is validated as the function starts


def record_handler(record: SQSRecord) -> None:
    metrics.add_metric(name=DEAD_LETTERS, unit=MetricUnit.Count, value=1)
    try:
        signal = TaskSignal.model_validate_json(record.body)
    except ValidationError as e:
        # not a task signal: there is no row to give up; operators see it in the DLQ as such
        reason = str(e.errors(include_url=False)[:1])
        logger.warning(
            "filing a dead letter that is not a task signal",
            message_id=record.message_id,
            body=record.body[:200],
            reason=reason,
        )
        metrics.add_metric(name=MALFORMED_RECORDS, unit=MetricUnit.Count, value=1)
        _file(record, Verdict.NOT_A_SIGNAL, f"not a task signal: {reason}")
        return
    with logger.append_context_keys(correlation_id=signal.task_id, task_id=signal.task_id):
        _give_up(record, signal)


def _give_up(record: SQSRecord, signal: TaskSignal) -> None:
    s = settings()
    # a LeaseStillLiveError propagates: the record is reported failed and comes back later
    outcome = give_up(
        store(),
        signal.task_id,
        int(record.attributes.approximate_receive_count or 0),
        dispatcher=dispatcher(),
        max_receive_count=s.max_receive_count,
        requeues=signal.requeues,
        max_requeues=s.max_requeues,
    )
    if outcome.failed:
        logger.warning("task given up", error=outcome.error)
        metrics.add_metric(name=TASKS_GIVEN_UP, unit=MetricUnit.Count, value=1)
        _file(record, Verdict.GAVE_UP, outcome.error or "given up")
    elif outcome.requeued:
        # signalled afresh: no letter (the new signal carries the task on)
        logger.warning("task signalled afresh", note=outcome.note)
        metrics.add_metric(name=TASKS_RESIGNALLED, unit=MetricUnit.Count, value=1)
    else:
        logger.info("dead letter needs no change to the row", note=outcome.note)
        _file(record, Verdict.NO_SUCH_TASK if outcome.missing else Verdict.ENDED, outcome.note)


def _file(record: SQSRecord, verdict: Verdict, note: str) -> None:
    """The letter goes to the operators' DLQ; a failure raises, so the intake delivers it again."""
    sent = record.attributes.sent_timestamp
    letter_id = filer().file(
        body=record.body,
        original_message_id=record.message_id,
        sent_timestamp=int(sent) if sent and str(sent).isdigit() else None,
        receive_count=int(record.attributes.approximate_receive_count or 0),
        verdict=verdict,
        note=note,
    )
    logger.info("dead letter filed", letter_id=letter_id, verdict=verdict.value)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
