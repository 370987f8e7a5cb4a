"""Tasks no runner will finish on its own: lost signals, expired leases, dead letters.

The reconciler (a schedule in AWS, a timer on the local stack) re-signals rows the queue forgot:
``pending`` rows nobody claimed (a stream record or SQS message lost) and ``processing`` rows whose
lease expired long ago (a runner died). It only queries the status GSI; signals are idempotent
because the row is the truth, so a duplicate costs one failed claim.

The dead-letter handler gives a task up when its signal was received ``maxReceiveCount`` times.
What it writes counts the row's ``attempts`` (claims), as everything a person reads does: the
signal's receive count also counts receives that never reached a claim (and, in moto, the one that
moved the message to the DLQ).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from shared.dispatch import Dispatcher
from shared.models import MAX_ATTEMPTS, ErrorKind, InvalidRow, Task, TaskSignal, TaskStatus
from shared.store import LEASE_HORIZON_SECONDS, InvalidRowError, TaskNotFoundError, TaskRepository

logger = logging.getLogger(__name__)

NO_ERROR = "no error recorded"
# what a row that is still processing with no error means: its runner died without a word
STOPPED_HEARTBEATING = "the runner working on it stopped heartbeating"
STOPPED_WHY = "(it may have been killed, or the agent took it down)"


def iso_at(epoch_seconds: float) -> str:
    """Epoch seconds in the rows' timestamp format (ISO 8601 UTC, milliseconds, ``Z``)."""
    at = dt.datetime.fromtimestamp(epoch_seconds, dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class ReconcileReport(BaseModel):
    """What one reconciler pass re-signalled, by task id."""

    pending: list[str] = Field(default_factory=list)  # pending, unclaimed past the threshold
    expired: list[str] = Field(default_factory=list)  # processing, lease expired past the threshold

    @property
    def total(self) -> int:
        return len(self.pending) + len(self.expired)


class Reconciler:
    """One pass over the status GSI: re-signal lost pending rows and long-expired leases."""

    def __init__(
        self,
        store: TaskRepository,
        dispatcher: Dispatcher,
        clock: Callable[[], float] = time.time,
        pending_age_seconds: float = 60,
        stale_lease_seconds: float = 60,
        limit: int = 500,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self.pending_age_seconds = pending_age_seconds
        self.stale_lease_seconds = stale_lease_seconds
        self.limit = limit

    def run(self) -> ReconcileReport:
        """Re-signal what needs it; returns the ids signalled. A row the code cannot read is
        signalled too (the runner then fails it with its reason) and never stops the pass."""
        now = self._clock()
        report = ReconcileReport()
        cutoff = iso_at(now - self.pending_age_seconds)
        for row in self._store.list_tasks(TaskStatus.PENDING, created_before=cutoff, limit=self.limit):
            # a row reset to pending keeps its createdAt: its own MODIFY already signalled it
            if isinstance(row, Task) and (row.updated_at or "") >= cutoff:
                continue
            if self._signal(row, "reconcile: pending and unclaimed"):
                report.pending.append(str(row.id))
        stale_before = now - self.stale_lease_seconds
        for row in self._store.list_tasks(TaskStatus.PROCESSING, limit=self.limit):
            lease = row.lease_expires_at if isinstance(row, Task) else None
            # a lease beyond the horizon was written by no runner: the row is signalled like a dead one
            if lease is not None and stale_before <= lease <= now + LEASE_HORIZON_SECONDS:
                continue
            if self._signal(row, "reconcile: lease expired"):
                report.expired.append(str(row.id))
        return report

    def _signal(self, row: Task | InvalidRow, reason: str) -> bool:
        if not row.id:
            why = getattr(row, "reason", "")
            logger.warning(
                "skipping a row without a string id in the status index: %s", why, extra={"reason": why}
            )
            return False
        message_id = self._dispatcher.send(TaskSignal(task_id=row.id, reason=reason))
        logger.info("re-signalled task %s (%s), message %s", row.id, reason, message_id)
        return True


class LeaseStillLiveError(Exception):
    """The row is being worked on under a live lease: the dead letter waits for it to end or expire."""


class DeadLetterOutcome(BaseModel):
    """What the dead-letter handler did with one signal."""

    task_id: str
    failed: bool  # the row was marked failed by this call
    error: str | None = None  # the error written, when it was
    requeued: bool = False  # signalled afresh instead: most receives never reached a claim
    note: str = ""  # why not, when it was not
    missing: bool = False  # the signal names no row


def give_up(
    store: TaskRepository,
    task_id: str,
    receive_count: int,
    clock: Callable[[], float] = time.time,
    *,
    dispatcher: Dispatcher | None = None,
    max_receive_count: int | None = None,
    requeues: int = 0,
    max_requeues: int = 2,
) -> DeadLetterOutcome:
    """Mark the task ``failed`` with "gave up after N attempts: <what happened>" unless it already ended.

    N is the row's ``attempts``. What happened is the row's last error or, when there is none and
    the row is still processing, that its runner stopped heartbeating (each attempt ended that way:
    one that ends otherwise writes the row). A row no runner ever claimed says so instead. A row
    still held under a live lease raises LeaseStillLiveError, so the dead letter is retried instead
    of pulling the row from under a working runner.

    A task whose receives mostly never reached a claim (``attempts`` below ``max_receive_count``:
    its signal sat in a runner that a poison task took down, say) is not the poison: with a
    ``dispatcher`` it is signalled afresh instead, at most ``max_requeues`` times.
    """
    try:
        row = store.get_row(task_id)  # plain values: a row the code cannot read is given up too
    except TaskNotFoundError:
        return DeadLetterOutcome(task_id=task_id, failed=False, note="no such row", missing=True)
    status = row.get("status")
    if status in (TaskStatus.COMPLETE.value, TaskStatus.FAILED.value):
        return DeadLetterOutcome(task_id=task_id, failed=False, note=f"already {status}")
    lease = row.get("leaseExpiresAt")
    now = clock()
    # a lease beyond the horizon was written by no runner: it holds nothing
    if (
        status == TaskStatus.PROCESSING.value
        and isinstance(lease, int | float)
        and now < lease <= now + LEASE_HORIZON_SECONDS
    ):
        raise LeaseStillLiveError(f"task {task_id} is processing under a lease until {iso_at(lease)}")
    unreadable = _unreadable(store, task_id)
    claims = _claims(row)
    if (
        unreadable is None
        and dispatcher
        and max_receive_count
        and claims < max_receive_count
        and requeues < max_requeues
    ):
        reason = f"requeued from the DLQ: {receive_count} receives but {_times(claims, 'attempt')}"
        dispatcher.send(TaskSignal(task_id=task_id, reason=reason, requeues=requeues + 1))
        return DeadLetterOutcome(task_id=task_id, failed=False, requeued=True, note=reason)
    # a row no runner can read is not requeued: every runner would refuse it the same way
    error = f"gave up: {unreadable}" if unreadable else give_up_error(row, receive_count)
    kind = ErrorKind.INVALID_TASK if unreadable else ErrorKind.GAVE_UP
    if store.fail_unowned(task_id, error, kind):
        return DeadLetterOutcome(task_id=task_id, failed=True, error=error)
    # the row changed between the read and the write: it ended, or a runner took it again
    now_status = store.get_row(task_id).get("status")
    if now_status == TaskStatus.PROCESSING.value:
        raise LeaseStillLiveError(f"task {task_id} was claimed again while being given up")
    return DeadLetterOutcome(task_id=task_id, failed=False, note=f"became {now_status} meanwhile")


def _unreadable(store: TaskRepository, task_id: str) -> str | None:
    """Why the row cannot be read as a task (the reason names the field), or None."""
    try:
        store.get(task_id)
    except InvalidRowError as e:
        return e.reason
    except TaskNotFoundError:
        return None
    return None


def _claims(row: dict[str, Any]) -> int:
    """The row's ``attempts`` when it is a count (0 for 1.5, -1, 38 nines or anything else)."""
    attempts = row.get("attempts")
    ok = isinstance(attempts, int) and not isinstance(attempts, bool) and 0 <= attempts <= MAX_ATTEMPTS
    return attempts if ok and isinstance(attempts, int) else 0


def give_up_error(row: dict[str, Any], receive_count: int) -> str:
    """The ``error`` a given-up task ends with, counted in the row's ``attempts``."""
    claims = _claims(row)
    if claims <= 0:
        return f"gave up: its signal was received {_times(receive_count, 'time')} and no runner claimed it"
    last = row.get("error")
    if not last and row.get("status") == TaskStatus.PROCESSING.value:
        often = f" {_times(claims, 'time')}" if claims > 1 else ""
        last = f"{STOPPED_HEARTBEATING}{often} {STOPPED_WHY}"
    return f"gave up after {_times(claims, 'attempt')}: {last or NO_ERROR}"


def _times(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
