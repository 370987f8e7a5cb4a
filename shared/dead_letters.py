"""Dead letters: signals that ran out of receives, filed where operators can inspect them.

SQS redrives a signal received ``maxReceiveCount`` times to the dead-letter *intake* queue. The
dead-letter function reads the intake (its event source mapping deletes what it reads), gives the
task up or signals it afresh (``shared.reconcile.give_up``), and files the letter in the dead-letter
queue with what it found (``file_letter``). Nothing consumes that queue: a letter stays there until
an operator redrives or purges it (``aipm dlq``) or its retention ends, so the queue's depth (and
its alarm) counts dead letters waiting for a person.

A filed letter is a new message with the signal's body; its message attributes keep the original
message id, when the signal was first sent, how often it was received, and the verdict. A letter
that reached the queue without the function (its filing failed again and again) has none of them.

Reading the queue must lose nothing: ``DeadLetterQueue.held`` receives the letters hidden for a
short while and makes every one it did not delete visible again as it ends.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

from shared.dispatch import Dispatcher
from shared.models import TaskSignal, TaskStatus
from shared.reconcile import iso_at
from shared.store import TaskNotFoundError, TaskRepository, TransitionError

logger = logging.getLogger(__name__)

ATTR_ORIGINAL_ID = "aipm.originalMessageId"
ATTR_FIRST_SENT = "aipm.firstSent"  # epoch milliseconds the signal was first sent
ATTR_RECEIVES = "aipm.receiveCount"  # receives of the signal before it was dead-lettered
ATTR_VERDICT = "aipm.verdict"  # a Verdict
ATTR_NOTE = "aipm.note"  # the sentence that goes with it
NOTE_CHARS = 1000
REDRIVE_REASON = "redriven from the DLQ by an operator"


class Verdict(StrEnum):
    """What the dead-letter function found when it filed a letter."""

    GAVE_UP = "gave_up"  # it gave the task up: the row is failed (errorKind gave_up or invalid_task)
    ENDED = "already_ended"  # the task had ended (complete or failed) before its signal died
    NO_SUCH_TASK = "no_such_task"  # the signal names no row
    NOT_A_SIGNAL = "not_a_task_signal"  # the body is no task signal: nothing to run
    UNFILED = "unfiled"  # reached the queue without the function (its filing kept failing)


class DeadLetter(BaseModel):
    """One letter as operators see it (``aipm dlq list --json``)."""

    message_id: str
    task_id: str | None  # None: not a task signal
    signal_error: str | None = None  # why the body is not a task signal
    verdict: Verdict
    note: str = ""
    receive_count: int  # receives of the signal before it was dead-lettered
    first_sent: str | None = None  # ISO 8601 UTC
    age_seconds: float | None = None
    original_message_id: str | None = None
    body: str

    @classmethod
    def from_message(cls, message: dict[str, Any], now: float | None = None) -> DeadLetter:
        """A received message (with ``MessageAttributeNames=["All"]`` and ``All`` attributes)."""
        attrs = {k: v.get("StringValue", "") for k, v in (message.get("MessageAttributes") or {}).items()}
        system = message.get("Attributes") or {}
        body = message.get("Body") or ""
        task_id, signal_error = None, None
        try:
            task_id = TaskSignal.model_validate_json(body).task_id
        except ValidationError as e:
            signal_error = _first_error(e)
        verdict = _verdict(attrs.get(ATTR_VERDICT)) or (
            Verdict.NOT_A_SIGNAL if task_id is None else Verdict.UNFILED
        )
        sent_ms = _int(attrs.get(ATTR_FIRST_SENT)) or _int(system.get("SentTimestamp"))
        now = time.time() if now is None else now
        return cls(
            message_id=message["MessageId"],
            task_id=task_id,
            signal_error=signal_error,
            verdict=verdict,
            note=attrs.get(ATTR_NOTE, ""),
            receive_count=_int(attrs.get(ATTR_RECEIVES)) or _int(system.get("ApproximateReceiveCount")) or 0,
            first_sent=iso_at(sent_ms / 1000) if sent_ms else None,
            age_seconds=round(now - sent_ms / 1000, 3) if sent_ms else None,
            original_message_id=attrs.get(ATTR_ORIGINAL_ID) or None,
            body=body,
        )

    def matches(self, message_id: str) -> bool:
        """Whether an operator's ``message_id`` names this letter (its own id or the signal's)."""
        return message_id in (self.message_id, self.original_message_id)


class LetterFiler:
    """Files letters in the dead-letter queue (the dead-letter function's side)."""

    def __init__(self, sqs: Any, dlq_url: str) -> None:
        self._sqs = sqs
        self.dlq_url = dlq_url

    def file(self, **letter: Any) -> str:
        """``file_letter`` into this queue; returns the letter's message id."""
        return file_letter(self._sqs, self.dlq_url, **letter)


def file_letter(
    sqs: Any,
    dlq_url: str,
    *,
    body: str,
    original_message_id: str,
    sent_timestamp: int | None,
    receive_count: int,
    verdict: Verdict,
    note: str,
) -> str:
    """Put a letter in the dead-letter queue for operators; returns its message id."""
    attributes = {
        ATTR_ORIGINAL_ID: original_message_id,
        ATTR_RECEIVES: str(receive_count),
        ATTR_VERDICT: verdict.value,
        **({ATTR_FIRST_SENT: str(sent_timestamp)} if sent_timestamp else {}),
        **({ATTR_NOTE: note[:NOTE_CHARS]} if note else {}),
    }
    kinds = {ATTR_RECEIVES: "Number", ATTR_FIRST_SENT: "Number"}
    resp = sqs.send_message(
        QueueUrl=dlq_url,
        MessageBody=body,
        MessageAttributes={
            k: {"DataType": kinds.get(k, "String"), "StringValue": v} for k, v in attributes.items()
        },
    )
    return str(resp["MessageId"])


class HeldLetter(BaseModel):
    """A letter received and hidden, with the receipt that deletes it or puts it back."""

    letter: DeadLetter
    receipt: str
    deleted: bool = False


class DeadLetterQueue:
    """The operators' dead-letter queue, read without losing anything."""

    def __init__(self, sqs: Any, url: str, *, visibility_seconds: int = 60, wait_seconds: int = 1) -> None:
        self.sqs = sqs  # also the client a redrive's signals go through
        self.url = url
        self.visibility_seconds = visibility_seconds
        self.wait_seconds = wait_seconds

    @contextlib.contextmanager
    def held(self, limit: int = 1000) -> Iterator[list[HeldLetter]]:
        """Receive up to ``limit`` letters, hidden while the block runs; every one the block did not
        ``delete`` is visible again when it ends, whatever happens in it."""
        held: dict[str, HeldLetter] = {}
        try:
            self._receive_into(held, limit)
            yield list(held.values())
        finally:
            self._put_back([h.receipt for h in held.values() if not h.deleted])

    def delete(self, held: HeldLetter) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=held.receipt)
        held.deleted = True

    def _receive_into(self, held: dict[str, HeldLetter], limit: int) -> None:
        # a long poll (even of a second) asks every SQS server, so an empty answer means none is left
        # visible; held letters stay hidden, so each receive brings new ones
        while len(held) < limit:
            resp = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(10, limit - len(held)),
                WaitTimeSeconds=self.wait_seconds,
                VisibilityTimeout=self.visibility_seconds,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            messages = resp.get("Messages") or []
            if not messages:
                return
            now = time.time()
            for m in messages:
                if m["MessageId"] in held:  # seen again (its hold ran out): keep the newest receipt
                    held[m["MessageId"]].receipt = m["ReceiptHandle"]
                    continue
                held[m["MessageId"]] = HeldLetter(
                    letter=DeadLetter.from_message(m, now), receipt=m["ReceiptHandle"]
                )

    def _put_back(self, receipts: list[str]) -> None:
        for start in range(0, len(receipts), 10):
            batch = receipts[start : start + 10]
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(batch)
            ]
            try:
                resp = self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
                failed = resp.get("Failed") or []
            except (ClientError, BotoCoreError) as e:
                failed = entries
                logger.warning("could not put %d dead letters back at once (%s)", len(batch), e)
            for entry in failed:
                # a letter not put back is only hidden: it is visible again when its hold ends
                logger.warning("dead letter %s stays hidden until its hold ends", entry.get("Id"))


class RedriveOutcome(StrEnum):
    REDRIVEN = "redriven"  # reset to pending and signalled; the letter left the queue
    SIGNALLED = "signalled"  # already pending: signalled again; the letter left the queue
    ALREADY_COMPLETE = "already_complete"  # not run again; the letter left the queue
    ALREADY_PROCESSING = "already_processing"  # a runner has it; the letter left the queue
    KEPT = "kept"  # nothing to run (not a task signal, or no such row): the letter stays


class RedriveResult(BaseModel):
    message_id: str
    task_id: str | None
    outcome: RedriveOutcome
    sentence: str


def redrive(
    queue: DeadLetterQueue, held: HeldLetter, store: TaskRepository, dispatcher: Dispatcher
) -> RedriveResult:
    """Run one letter's task again: the row goes back to pending through the store's conditional
    reset and the task is signalled, then the letter is deleted. A task already complete is not run
    again (its letter is deleted all the same); a letter with nothing to run stays."""
    letter = held.letter

    def result(outcome: RedriveOutcome, sentence: str) -> RedriveResult:
        return RedriveResult(
            message_id=letter.message_id, task_id=letter.task_id, outcome=outcome, sentence=sentence
        )

    if letter.task_id is None:
        return result(
            RedriveOutcome.KEPT, "not a task signal, so nothing to run; `aipm dlq purge` removes it"
        )
    task_id = letter.task_id
    try:
        status = store.get_row(task_id).get("status")
        if status == TaskStatus.FAILED.value:  # complete: done, never run again
            try:
                store.reset(task_id)
                status = "reset"
            except TransitionError:
                status = store.get_row(task_id).get("status")  # it changed meanwhile
    except TaskNotFoundError:
        return result(RedriveOutcome.KEPT, f"task {task_id} does not exist, so nothing to run")
    if status == "reset":
        dispatcher.send(TaskSignal(task_id=task_id, reason=REDRIVE_REASON))
        outcome, sentence = RedriveOutcome.REDRIVEN, f"task {task_id} is pending again and signalled"
    elif status == TaskStatus.COMPLETE.value:
        outcome, sentence = (
            RedriveOutcome.ALREADY_COMPLETE,
            f"task {task_id} was already complete: not run again",
        )
    elif status == TaskStatus.PROCESSING.value:
        outcome, sentence = (
            RedriveOutcome.ALREADY_PROCESSING,
            f"task {task_id} is already processing: left to its runner",
        )
    else:  # pending (or a status no code writes): a signal lets a runner look at it
        dispatcher.send(TaskSignal(task_id=task_id, reason=REDRIVE_REASON))
        outcome, sentence = RedriveOutcome.SIGNALLED, f"task {task_id} was already {status}: signalled again"
    queue.delete(held)
    return result(outcome, sentence + "; its letter left the DLQ")


def select(held: Iterable[HeldLetter], message_ids: list[str]) -> tuple[list[HeldLetter], list[str]]:
    """The letters ``message_ids`` name (their own ids or the signal's), and the ids that name none."""
    held = list(held)
    chosen: list[HeldLetter] = []
    unknown: list[str] = []
    for mid in message_ids:
        found = [h for h in held if h.letter.matches(mid)]
        if not found:
            unknown.append(mid)
        chosen += [h for h in found if h not in chosen]
    return chosen, unknown


def _first_error(e: ValidationError) -> str:
    errors = e.errors(include_url=False)
    if not errors:
        return str(e)
    where = ".".join(str(p) for p in errors[0].get("loc", ()))
    return f"{where}: {errors[0]['msg']}" if where else str(errors[0]["msg"])


def _verdict(value: str | None) -> Verdict | None:
    try:
        return Verdict(value) if value else None
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
