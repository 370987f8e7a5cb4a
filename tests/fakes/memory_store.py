"""The ``TaskRepository`` in memory: the queue table and the branch locks table as dicts, with the
same conditions as ``shared.store.TaskStore``. The contract tests in
``tests/integration/test_store.py`` run against both, so what the pipeline's unit tests learn on
this one holds on DynamoDB."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.models import (
    ErrorKind,
    InvalidRow,
    Task,
    TaskStatus,
    from_dynamodb,
    read_row,
    to_dynamodb,
    utc_now_iso,
)
from shared.store import (
    CANCELLED_ERROR,
    ERROR_CHARS,
    LEASE_HORIZON_SECONDS,
    LOCK_TTL_SECONDS,
    BranchBusyError,
    CancelOutcome,
    CancelRequestedError,
    Claim,
    ClaimLostError,
    InvalidRowError,
    LeaseLostError,
    TaskNotFoundError,
    TaskStore,
    TransitionError,
    Update,
    refuse_claim_at_limit,
    wire_fields,
)

PENDING, PROCESSING = TaskStatus.PENDING.value, TaskStatus.PROCESSING.value
COMPLETE, FAILED = TaskStatus.COMPLETE.value, TaskStatus.FAILED.value


def _stored(values: dict[str, Any]) -> dict[str, Any]:
    """Values as DynamoDB would give them back: None dropped, floats through Decimal (1030.0 reads
    back as 1030), enums as their strings."""
    return from_dynamodb(to_dynamodb(values))


def _number(value: Any) -> float | None:
    """A DynamoDB number attribute, or None: a comparison with anything else is false there."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _lease(at: float) -> float:
    return float(f"{at:.3f}")  # TaskStore writes leases with millisecond precision


class MemoryTaskStore:
    """Rows (``rows``, plain values under their wire names) and lock items (``locks``, by branch)
    in dicts; ``clock`` gives epoch seconds. One lock makes each operation atomic, as a conditional
    write or a transaction is."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.locks: dict[str, dict[str, Any]] = {}
        self._clock = clock
        self._mutex = threading.RLock()

    # -- reads -------------------------------------------------------------------------------
    def get_row(self, task_id: str) -> dict[str, Any]:
        with self._mutex:
            return copy.deepcopy(self._row(task_id))

    def get(self, task_id: str) -> Task:
        row = self._read(self.get_row(task_id))
        if isinstance(row, InvalidRow):
            raise InvalidRowError(task_id, row.reason)
        return row

    def _row(self, task_id: str) -> dict[str, Any]:
        if task_id not in self.rows:
            raise TaskNotFoundError(task_id)
        return self.rows[task_id]

    @staticmethod
    def _read(row: dict[str, Any]) -> Task | InvalidRow:
        return read_row(to_dynamodb(row))

    def list_by_status(
        self,
        status: TaskStatus,
        created_before: str | None = None,
        limit: int = 100,
        branch: str | None = None,
    ) -> list[Task]:
        tasks = []
        for row in self._query_status(status, created_before, limit, branch):
            read = self._read(row)
            if isinstance(read, Task):  # TaskStore skips an unreadable row (with a log line)
                tasks.append(read)
        return tasks

    def list_tasks(
        self,
        status: TaskStatus,
        created_before: str | None = None,
        limit: int = 100,
        *,
        branch: str | None = None,
        newest_first: bool = False,
    ) -> list[Task | InvalidRow]:
        rows = self._query_status(status, created_before, limit, branch, newest_first=newest_first)
        return [self._read(row) for row in rows]

    def _query_status(
        self,
        status: TaskStatus,
        created_before: str | None,
        limit: int,
        branch: str | None,
        *,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """The status index: only rows with a string status and a string createdAt are in it,
        ordered by createdAt."""
        with self._mutex:
            indexed = [
                copy.deepcopy(row)
                for row in self.rows.values()
                if row.get("status") == status.value and isinstance(row.get("createdAt"), str)
            ]
        indexed.sort(key=lambda row: row["createdAt"], reverse=newest_first)
        return [
            row
            for row in indexed
            if (created_before is None or row["createdAt"] < created_before)
            and (branch is None or row.get("branch") == branch)
        ][:limit]

    def put_new(self, row: dict[str, Any]) -> None:
        now = utc_now_iso()
        values = _stored({"status": PENDING, "createdAt": now, "updatedAt": now, **row})
        with self._mutex:
            if values["id"] in self.rows:
                raise TransitionError(f"task {row.get('id')!r} already exists")
            self.rows[values["id"]] = values

    def stamp_created(self, task_id: str, created_at: str) -> bool:
        with self._mutex:
            row = self.rows.get(task_id)
            if row is None or "createdAt" in row:
                return False
            row["createdAt"] = created_at
            return True

    # -- transitions -------------------------------------------------------------------------
    def claim(self, task: Task | str, runner_id: str, lease_seconds: float) -> Claim:
        if isinstance(task, str):
            try:
                task = self.get(task)
            except TaskNotFoundError as e:
                raise ClaimLostError(e.args[0]) from e
        refuse_claim_at_limit(task)
        task_id = task.id
        branch = task.branch if task.branch else None  # an empty branch can key no lock item
        with self._mutex:
            now = self._clock()
            lease = _lease(now + lease_seconds)
            row = self.rows.get(task_id)
            if row is None or not self._claimable(row, task, now):
                raise ClaimLostError(task_id)
            if branch is not None:
                lock = self.locks.get(branch)
                if lock is not None and not self._lock_takeable(lock, task_id, now):
                    holder = lock.get("taskId")
                    raise BranchBusyError(task_id, branch, holder if isinstance(holder, str) else None)
            stamp = utc_now_iso()
            row.update(
                _stored(
                    {
                        "status": PROCESSING,
                        "runnerId": runner_id,
                        "attempts": task.attempts + 1,  # the count read, as checked
                        "leaseExpiresAt": lease,
                        "startedAt": stamp,
                        "updatedAt": stamp,
                        "createdAt": row.get("createdAt", stamp),
                    }
                )
            )
            for name in ("error", "errorKind", "commitSha", "finishedAt", "waitingFor", "cancelRequestedAt"):
                row.pop(name, None)
            if branch is not None:
                self.locks[branch] = _stored(
                    {
                        "branch": branch,
                        "taskId": task_id,
                        "runnerId": runner_id,
                        "attempt": task.attempts + 1,
                        "leaseExpiresAt": lease,
                        "expiresAt": int(lease) + LOCK_TTL_SECONDS,
                    }
                )
            claimed = self.get(task_id)
        if claimed.runner_id != runner_id:
            raise ClaimLostError(task_id)
        return Claim(self, claimed, runner_id, branch)

    @staticmethod
    def _claimable(row: dict[str, Any], task: Task, now: float) -> bool:
        """Pending, or processing under a lease that has passed (or none); and still the row the
        caller read: the same branch, the same attempts count."""
        status = row.get("status")
        lease = row.get("leaseExpiresAt")
        n = _number(lease)
        expired = "leaseExpiresAt" not in row or (
            n is not None and (n < now or n > now + LEASE_HORIZON_SECONDS)
        )
        if not (status == PENDING or (status == PROCESSING and expired)):
            return False
        if row.get("branch") != task.branch:
            return False
        if task.attempts == 0 and "attempts" not in row:
            return True
        return _number(row.get("attempts")) == task.attempts

    @staticmethod
    def _lock_takeable(lock: dict[str, Any], task_id: str, now: float) -> bool:
        """Free (no item), expired (its runner died), or this task's own (a reclaim)."""
        lease = _number(lock.get("leaseExpiresAt"))
        return (lease is not None and lease < now) or lock.get("taskId") == task_id

    def _owned(self, claim: Claim) -> dict[str, Any]:
        """The row, if this claim still owns it (status processing, its runner and attempt)."""
        row = self.rows.get(claim.task_id)
        if (
            row is None
            or row.get("status") != PROCESSING
            or row.get("runnerId") != claim.runner_id
            or _number(row.get("attempts")) != claim.attempt
        ):
            raise LeaseLostError(claim.task_id)
        return row

    def _renew(self, claim: Claim, lease_seconds: float) -> float:
        with self._mutex:
            now = self._clock()
            lease = _lease(now + lease_seconds)
            row = self._owned(claim)
            if row.get("cancelRequestedAt"):
                raise CancelRequestedError(claim.task_id)  # the operator's cancel refuses the renewal
            current = _number(row.get("leaseExpiresAt"))
            if current is None or not current > now:
                raise LeaseLostError(claim.task_id)  # only a claim gives an expired row a new lease
            lock = self.locks.get(claim.branch) if claim.branch is not None else None
            if claim.branch is not None and (
                lock is None or lock.get("taskId") != claim.task_id or lock.get("runnerId") != claim.runner_id
            ):
                raise LeaseLostError(claim.task_id)
            row.update(_stored({"leaseExpiresAt": lease}))
            if lock is not None:
                lock.update(_stored({"leaseExpiresAt": lease, "expiresAt": int(lease) + LOCK_TTL_SECONDS}))
            return lease

    def _record(self, claim: Claim, fields: dict[str, Any], live: bool = False) -> None:
        wire = wire_fields(fields)
        with self._mutex:
            row = self._owned(claim)
            lease = _number(row.get("leaseExpiresAt"))
            if live and (lease is None or not lease > self._clock()):
                raise LeaseLostError(claim.task_id)
            for name in [k for k, v in wire.items() if v is None]:  # None: the field goes
                row.pop(name, None)
            kept = {k: v for k, v in wire.items() if v is not None}
            row.update(_stored({**kept, "updatedAt": utc_now_iso()}))

    def _end(self, claim: Claim, update: Update) -> None:
        with self._mutex:
            row = self._owned(claim)
            row.update(_stored({"status": update.status.value, **update.sets}))
            for name in update.removes:
                row.pop(name, None)
            if claim.branch is not None:
                self._unlock(claim.branch, claim.task_id, claim.runner_id)

    def fail_unowned(self, task_id: str, error: str, kind: ErrorKind = ErrorKind.GAVE_UP) -> bool:
        with self._mutex:
            row = self.rows.get(task_id)
            if row is None or row.get("status") in (COMPLETE, FAILED):
                return False
            lease = _number(row.get("leaseExpiresAt"))
            now = self._clock()
            live = "leaseExpiresAt" in row and not (
                lease is not None and (lease < now or lease > now + LEASE_HORIZON_SECONDS)
            )
            if row.get("status") == PROCESSING and live:
                return False  # never pulled from under a runner that holds a live lease
            stamp = utc_now_iso()
            row.update(
                _stored(
                    {
                        "status": FAILED,
                        "error": error[:ERROR_CHARS],
                        "errorKind": ErrorKind(kind).value,
                        "finishedAt": stamp,
                    }
                )
            )
            row["updatedAt"] = stamp
            row.pop("leaseExpiresAt", None)
            branch = row.get("branch")
            if isinstance(branch, str) and branch:
                self._unlock(branch, task_id, None)
            return True

    def reset(self, task_id: str) -> None:
        with self._mutex:
            row = self.rows.get(task_id)
            if row is None:
                raise TaskNotFoundError(task_id)
            if row.get("status") not in (COMPLETE, FAILED):
                raise TransitionError(f"task {task_id!r} is {row.get('status')}, not complete or failed")
            row.update({"status": PENDING, "updatedAt": utc_now_iso()})
            for name in ("leaseExpiresAt", "runnerId", "cancelRequestedAt"):
                row.pop(name, None)

    def cancel(self, task_id: str) -> CancelOutcome:
        with self._mutex:
            row = self.rows.get(task_id)
            now = self._clock()
            if row is None:
                raise TaskNotFoundError(task_id)
            status = row.get("status")
            lease = _number(row.get("leaseExpiresAt"))
            dead = "leaseExpiresAt" not in row or (
                lease is not None and (lease < now or lease > now + LEASE_HORIZON_SECONDS)
            )
            stamp = utc_now_iso()
            if status == PENDING or (status == PROCESSING and dead):
                row.update(
                    {
                        "status": FAILED,
                        "error": CANCELLED_ERROR,
                        "errorKind": ErrorKind.CANCELLED.value,
                        "finishedAt": stamp,
                        "updatedAt": stamp,
                    }
                )
                for name in ("leaseExpiresAt", "waitingFor", "cancelRequestedAt"):
                    row.pop(name, None)
                return CancelOutcome.CANCELLED
            if status == PROCESSING:
                row.setdefault("cancelRequestedAt", stamp)
                row["updatedAt"] = stamp
                return CancelOutcome.REQUESTED
        TaskStore._refuse_cancel(task_id, dict(row))
        raise AssertionError("not reached")

    def _unlock(self, branch: str, task_id: str, runner_id: str | None) -> None:
        """Delete the branch's lock if it is ``task_id``'s (and ``runner_id``'s when given)."""
        lock = self.locks.get(branch)
        if lock is None or lock.get("taskId") != task_id:
            return
        if runner_id is not None and lock.get("runnerId") != runner_id:
            return
        del self.locks[branch]
