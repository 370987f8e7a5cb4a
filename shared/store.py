"""The task store: every status transition is one conditional DynamoDB write.

Conditions make ownership safe across any number of runners: a claim succeeds for exactly one of
them, and a runner that lost its lease cannot complete, fail or renew the row.

One task per branch at a time: a claim is one transaction of the row's conditional claim and a
lock item keyed by the task's branch in the branch locks table (strongly consistent). The lock
carries the same lease as the row: it is renewed with the row, deleted when the task ends, is
given back or is given up, and a crashed runner's lock is taken over once its lease has passed.

Rows travel as ``Task`` models. ``claim`` returns a ``Claim``: the handle that carries the
ownership (task, runner, attempt, locked branch) and makes every later transition.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from shared.models import (
    MAX_ATTEMPTS,
    ErrorKind,
    InvalidRow,
    Task,
    TaskStatus,
    from_dynamodb,
    read_row,
    to_dynamodb,
    utc_now_iso,
)

logger = logging.getLogger(__name__)

STATUS_INDEX = "status-createdAt-index"
LOG_TAIL_CHARS = 4000
ERROR_CHARS = 2000
FILTERED_PAGE = 100  # rows read per Query when a filter drops some of them
LOCK_TTL_SECONDS = 24 * 3600  # a lock item outlives its lease by a day; then TTL sweeps it away
# a lease further ahead than this was written by no runner (leases are minutes long): it holds
# nothing, so a row under it can be reclaimed or failed (a 39-digit leaseExpiresAt never passes)
LEASE_HORIZON_SECONDS = 30 * 24 * 3600
CONFLICT_RETRIES = 3  # a transaction cancelled only by a concurrent one touching the same item


class StoreError(Exception):
    """Base of the store's own errors."""


class TaskNotFoundError(StoreError):
    """No row with that id."""


class ClaimLostError(StoreError):
    """The row was not claimable: another runner owns it, or it is not pending."""


class LeaseLostError(StoreError):
    """This runner no longer owns the row (its lease expired and someone else reclaimed it)."""


class CancelRequestedError(LeaseLostError):
    """An operator asked this claim's attempt to stop (``aipm task cancel``): the row is still this
    claim's, but its lease is no longer renewed; the runner stops the agent, keeps the work and
    fails the row ``cancelled``. A LeaseLostError to code that does not know it: stop, push nothing."""


class CancelOutcome(StrEnum):
    """What ``TaskStore.cancel`` did."""

    CANCELLED = "cancelled"  # the row ended failed/cancelled in that write (it was not running)
    REQUESTED = "requested"  # it runs under a live lease: its runner stops it at its next renewal


CANCELLED_ERROR = "cancelled by an operator (aipm task cancel)"


class TransitionError(StoreError):
    """The row is not in a state that allows this transition."""


class BranchBusyError(StoreError):
    """Another task holds the task's branch under a live lease: the task was not claimed (its row
    is as it was, e.g. still pending); it waits until the holder ends."""

    def __init__(self, task_id: str, branch: str, holder: str | None = None) -> None:
        super().__init__(f"task {task_id}: branch {branch} is held by task {holder or 'unknown'}")
        self.task_id = task_id
        self.branch = branch
        self.holder = holder


class InvalidRowError(StoreError):
    """The row cannot be read as a task, or DynamoDB refused the claim for the row's own content
    (e.g. ``attempts`` is not a number): retrying cannot help. ``reason`` says why."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(reason)
        self.task_id = task_id
        self.reason = reason


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _is_conditional_failure(err: ClientError) -> bool:
    return _error_code(err) == "ConditionalCheckFailedException"


def _cancellation_codes(err: ClientError) -> list[str]:
    """The per-item reasons of a cancelled transaction, in the order of its items ([] otherwise)."""
    if _error_code(err) != "TransactionCanceledException":
        return []
    return [str(r.get("Code") or "None") for r in err.response.get("CancellationReasons") or []]


def _cancelled_item(err: ClientError, index: int) -> dict[str, Any]:
    """The item whose condition cancelled a transaction (asked for with ALL_OLD), as plain values."""
    reasons: Any = err.response.get("CancellationReasons") or []
    return from_dynamodb(reasons[index].get("Item") or {}) if index < len(reasons) else {}


def _refused_item(err: ClientError) -> dict[str, Any]:
    """The item a refused conditional write returned (ReturnValuesOnConditionCheckFailure=ALL_OLD),
    as plain values ({} when there was none)."""
    item: Any = err.response.get("Item") or {}
    return from_dynamodb(item)


def _item_id(item: dict[str, Any]) -> str:
    raw = item.get("id")
    return str(raw.get("S")) if isinstance(raw, dict) else "(no id)"


def _lockable(branch: object) -> bool:
    """A branch that can key a lock item (DynamoDB refuses empty keys). A row without one fails
    its checks right after the claim, so it needs no lock."""
    return isinstance(branch, str) and bool(branch)


class Claim:
    """This runner's hold on one task: made by ``TaskRepository.claim``, it carries the ownership
    (task id, runner, attempt and the branch it locked) and makes every later transition, each one
    conditional write (or one transaction with the branch lock) that holds only while the row is
    still this claim's."""

    def __init__(self, store: ClaimWrites, task: Task, runner_id: str, branch: str | None) -> None:
        self._store = store
        self.task = task  # the row as the claim left it
        self.runner_id = runner_id
        self.attempt = task.attempts
        self.branch = branch  # the locked branch (None: the row's branch could key no lock)

    @property
    def task_id(self) -> str:
        return self.task.id

    def renew(self, lease_seconds: float) -> float:
        """Extend the lease (and the branch lock's); returns the new expiry, counted from before
        the call. Raises LeaseLostError when the row or the lock is no longer this claim's, or its
        lease has already run out (only a claim gives an expired row a new lease)."""
        return self._store._renew(self, lease_seconds)

    def record(self, **fields: Any) -> None:
        """Set informational fields (``base_sha``, ``wip_sha``, ``wip_ref``, ``log_tail``,
        ``waiting_for``); a field given None is removed from the row."""
        self._store._record(self, fields)

    def progress(self, log_tail: str) -> None:
        """The run's latest output on the row (``logTail``, its last ``LOG_TAIL_CHARS``): a write
        that lands only while the row is this claim's under a lease that has not run out, so a
        runner that lost the task never writes over its new owner's. Raises LeaseLostError."""
        self._store._record(self, {"log_tail": log_tail[-LOG_TAIL_CHARS:]}, live=True)

    def complete(self, commit_sha: str, log_tail: str = "") -> None:
        """processing -> complete with the pushed commit; the saved work in progress is folded into
        that commit, so ``wipSha``/``wipRef`` are cleared (a retry must not resume from them)."""
        self._store._end(self, _complete_update(commit_sha, log_tail))

    def fail(self, error: str, log_tail: str = "", *, kind: ErrorKind) -> None:
        """processing -> failed with a readable error and its ``errorKind``, in one write."""
        self._store._end(self, _fail_update(error, log_tail, kind))

    def release(self, note: str, retry_after: float | None = None) -> None:
        """processing -> pending: the task is given back (shutdown, a rate limit), with a note in
        ``error``; with ``retry_after`` (epoch seconds) no runner claims it before then."""
        self._store._end(self, _release_update(note, retry_after))


class ClaimWrites(Protocol):
    """What a ``Claim`` asks of the repository that made it."""

    def _renew(self, claim: Claim, lease_seconds: float) -> float: ...
    def _record(self, claim: Claim, fields: dict[str, Any], live: bool = False) -> None: ...
    def _end(self, claim: Claim, update: Update) -> None: ...


class TaskRepository(ClaimWrites, Protocol):
    """The queue table as the runner, the Lambdas and the CLI use it. ``TaskStore`` is the
    DynamoDB implementation; tests have an in-memory one with the same conditions."""

    def get(self, task_id: str) -> Task: ...
    def get_row(self, task_id: str) -> dict[str, Any]: ...
    def list_by_status(
        self,
        status: TaskStatus,
        created_before: str | None = None,
        limit: int = 100,
        branch: str | None = None,
    ) -> list[Task]: ...
    def list_tasks(
        self,
        status: TaskStatus,
        created_before: str | None = None,
        limit: int = 100,
        *,
        branch: str | None = None,
        newest_first: bool = False,
    ) -> list[Task | InvalidRow]: ...
    def put_new(self, row: dict[str, Any]) -> None: ...
    def stamp_created(self, task_id: str, created_at: str) -> bool: ...
    def note_waiting(self, task_id: str, note: str, attempts: int | None) -> bool: ...
    def claim(self, task: Task | str, runner_id: str, lease_seconds: float) -> Claim: ...
    def fail_unowned(self, task_id: str, error: str, kind: ErrorKind = ErrorKind.GAVE_UP) -> bool: ...
    def reset(self, task_id: str) -> None: ...
    def cancel(self, task_id: str) -> CancelOutcome: ...


@dataclass(frozen=True)
class Update:
    """The SET/REMOVE of a transition that ends a claim, with its values (plain Python)."""

    status: TaskStatus
    sets: dict[str, Any] = field(default_factory=dict)  # wire names -> values
    removes: tuple[str, ...] = ()


def _complete_update(commit_sha: str, log_tail: str) -> Update:
    stamp = utc_now_iso()
    return Update(
        TaskStatus.COMPLETE,
        {
            "commitSha": commit_sha,
            "logTail": log_tail[-LOG_TAIL_CHARS:],
            "finishedAt": stamp,
            "updatedAt": stamp,
        },
        (
            "leaseExpiresAt",
            "error",
            "errorKind",
            "wipSha",
            "wipRef",
            "retryAfter",
            "cancelRequestedAt",
            "waitingFor",
        ),
    )


def _fail_update(error: str, log_tail: str, kind: ErrorKind) -> Update:
    stamp = utc_now_iso()
    return Update(
        TaskStatus.FAILED,
        {
            "error": error[:ERROR_CHARS] or "failed",
            "errorKind": ErrorKind(kind).value,
            "logTail": log_tail[-LOG_TAIL_CHARS:],
            "finishedAt": stamp,
            "updatedAt": stamp,
        },
        ("leaseExpiresAt", "waitingFor"),
    )


def _release_update(note: str, retry_after: float | None = None) -> Update:
    sets: dict[str, Any] = {"error": note[:ERROR_CHARS], "updatedAt": utc_now_iso()}
    removes: tuple[str, ...] = ("leaseExpiresAt", "runnerId", "errorKind", "waitingFor")  # a note
    if retry_after is not None:
        sets["retryAfter"] = Decimal(str(round(retry_after, 3)))
    else:
        removes += ("retryAfter",)
    return Update(TaskStatus.PENDING, sets, removes)


def refuse_claim_at_limit(task: Task) -> None:
    """A claim adds one to ``attempts``: a row at ``MAX_ATTEMPTS`` is refused (InvalidRowError), so
    no claim can write a count that no later read accepts (38 nines would become 10^38)."""
    if task.attempts >= MAX_ATTEMPTS:
        raise InvalidRowError(
            task.id,
            f"invalid task row: attempts: {task.attempts} claims already, the most a task may have; "
            "reset attempts on the row to run it again",
        )


def wire_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``record``'s keyword arguments (the Task model's attribute names) as the row's wire names."""
    names = Task.model_fields
    out = {}
    for key, value in fields.items():
        if key not in names:
            raise TypeError(f"Task has no field {key!r}")
        out[names[key].alias or key] = value
    return out


class TaskStore:
    """The ``TaskRepository`` on DynamoDB: reads and transitions rows of the queue table through
    one injected client; one task per branch by the lock items of ``branch_locks_table``."""

    def __init__(
        self, dynamodb: Any, table_name: str, clock: Any = time.time, *, branch_locks_table: str
    ) -> None:
        if not branch_locks_table:
            raise ValueError("a branch locks table is required (BRANCH_LOCKS_TABLE)")
        self._ddb = dynamodb
        self.table_name = table_name
        self.branch_locks_table = branch_locks_table
        self._clock = clock

    # -- reads -------------------------------------------------------------------------------
    def get_row(self, task_id: str) -> dict[str, Any]:
        """The row as plain values with its wire names (strongly consistent), for operators, the
        dead letter and tests; any row can be read so (a Number of more than 38 digits is the
        exact int it holds). Raises TaskNotFoundError."""
        return from_dynamodb(self._get_item(task_id))

    def get(self, task_id: str) -> Task:
        """The row as a ``Task`` (strongly consistent). Raises TaskNotFoundError, and
        InvalidRowError with the reason when the row cannot be a task."""
        row = read_row(self._get_item(task_id))
        if isinstance(row, InvalidRow):
            raise InvalidRowError(task_id, row.reason)
        return row

    def _get_item(self, task_id: str) -> dict[str, Any]:
        resp = self._ddb.get_item(TableName=self.table_name, Key={"id": {"S": task_id}}, ConsistentRead=True)
        if "Item" not in resp:
            raise TaskNotFoundError(task_id)
        return dict(resp["Item"])

    def list_by_status(
        self,
        status: TaskStatus,
        created_before: str | None = None,
        limit: int = 100,
        branch: str | None = None,
    ) -> list[Task]:
        """Tasks of one status from the status GSI, oldest first (never a scan); ``branch`` filters.
        A row that cannot be a task is skipped with a log line, so one bad row never stops a
        listing (``list_tasks`` shows it instead)."""
        tasks = []
        for item in self._query_status(status, created_before, limit, branch):
            row = read_row(item)
            if isinstance(row, InvalidRow):
                logger.warning(
                    "skipping unreadable row %s: %s",
                    _item_id(item),
                    row.reason,
                    extra={"row_id": _item_id(item), "reason": row.reason},
                )
                continue
            tasks.append(row)
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
        """Rows of one status as ``Task`` models, oldest first (``newest_first``: the reverse), of
        ``branch`` only when given; a row that cannot be one is an ``InvalidRow`` in its place,
        saying why."""
        items = self._query_status(status, created_before, limit, branch, newest_first=newest_first)
        return [read_row(item) for item in items]

    def _query_status(
        self,
        status: TaskStatus,
        created_before: str | None,
        limit: int,
        branch: str | None,
        *,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Raw items from the status GSI. DynamoDB applies ``Limit`` to the rows it reads, before
        the filter: with a filter, pages of ``FILTERED_PAGE`` rows are read until ``limit`` rows
        matched (or the index ends)."""
        expr = "#s = :s"
        values: dict[str, Any] = {":s": {"S": status.value}}
        if created_before:
            expr += " AND createdAt < :before"
            values[":before"] = {"S": created_before}
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": expr,
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": values,
            "Limit": limit,
            "ScanIndexForward": not newest_first,
        }
        if branch is not None:
            kwargs["FilterExpression"] = "branch = :branch"
            kwargs["Limit"] = max(limit, FILTERED_PAGE)
            values[":branch"] = {"S": branch}
        while True:
            resp = self._ddb.query(**kwargs)
            items += resp.get("Items", [])
            if "LastEvaluatedKey" not in resp or len(items) >= limit:
                return items[:limit]
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def put_new(self, row: dict[str, Any]) -> None:
        """Insert a new pending row, as the backend does (refuses to overwrite an existing id)."""
        now = utc_now_iso()
        values = {"status": TaskStatus.PENDING.value, "createdAt": now, "updatedAt": now, **row}
        try:
            self._ddb.put_item(
                TableName=self.table_name,
                Item=to_dynamodb(values),
                ConditionExpression="attribute_not_exists(id)",
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                raise TransitionError(f"task {row.get('id')!r} already exists") from e
            raise

    def stamp_created(self, task_id: str, created_at: str) -> bool:
        """Give a row that has no ``createdAt`` this one (a row without it is not in the status
        index, so neither listings nor the reconciler could see it). Never overwrites a value the
        row has, never creates a row; returns whether it wrote."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression="SET createdAt = :created",
                ConditionExpression="attribute_exists(id) AND attribute_not_exists(createdAt)",
                ExpressionAttributeValues={":created": {"S": created_at}},
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                return False
            raise
        return True

    # -- transitions -------------------------------------------------------------------------
    def claim(self, task: Task | str, runner_id: str, lease_seconds: float) -> Claim:
        """pending -> processing, or reclaim a processing row whose lease has expired (or lies
        beyond ``LEASE_HORIZON_SECONDS``, where no runner's lease can), with the
        branch's lock in the same transaction. ``task`` is the row as the caller last read it: the
        claim holds only if its branch and attempts are still the same (an id: the row is read).

        Raises ClaimLostError when the row is not claimable, BranchBusyError when another task
        holds the branch, InvalidRowError when DynamoDB refuses the row's content."""
        if isinstance(task, str):
            try:
                task = self.get(task)
            except TaskNotFoundError as e:
                raise ClaimLostError(e.args[0]) from e
        refuse_claim_at_limit(task)
        now = self._clock()
        lease = now + lease_seconds
        task_id = task.id
        update = self._claim_update(task_id, runner_id, now, lease)
        branch = task.branch if _lockable(task.branch) else None
        values = update["ExpressionAttributeValues"]
        update["ConditionExpression"] += " AND branch = :branch"
        values[":branch"] = {"S": task.branch}
        # the lock records the attempt: the claim holds only on the attempts count read here
        if task.attempts == 0:
            update["ConditionExpression"] += " AND (attribute_not_exists(attempts) OR attempts = :seen)"
        else:
            update["ConditionExpression"] += " AND attempts = :seen"
        values[":seen"] = {"N": str(task.attempts)}
        items: list[dict[str, Any]] = [{"Update": update}]
        if branch is not None:
            items.append({"Put": self._lock_put(branch, task_id, runner_id, task.attempts + 1, now, lease)})
        try:
            self._transact(items)
        except ClientError as e:
            codes = _cancellation_codes(e)
            if (codes and codes[0] == "ConditionalCheckFailed") or _is_conditional_failure(e):
                raise ClaimLostError(task_id) from e
            if branch is not None and len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                holder = _cancelled_item(e, 1).get("taskId")
                raise BranchBusyError(task_id, branch, holder if isinstance(holder, str) else None) from e
            if "ValidationError" in codes or _error_code(e) == "ValidationException":
                raise InvalidRowError(task_id, f"the row cannot be claimed: {_message(e)}") from e
            raise
        claimed = self.get(task_id)  # a transaction returns no values
        if claimed.runner_id != runner_id:
            raise ClaimLostError(task_id)  # reclaimed since (this runner's lease ran out already)
        return Claim(self, claimed, runner_id, branch)

    def _lock_put(
        self, branch: str, task_id: str, runner_id: str, attempt: int, now: float, lease: float
    ) -> dict[str, Any]:
        return {
            "TableName": self.branch_locks_table,
            "Item": {
                "branch": {"S": branch},
                "taskId": {"S": task_id},
                "runnerId": {"S": runner_id},
                "attempt": {"N": str(attempt)},
                "leaseExpiresAt": {"N": f"{lease:.3f}"},
                "expiresAt": {"N": str(int(lease) + LOCK_TTL_SECONDS)},
            },
            # free, expired (its runner died), or this task's own (a reclaim; the row decides)
            "ConditionExpression": "attribute_not_exists(branch) OR leaseExpiresAt < :now OR taskId = :me",
            "ExpressionAttributeValues": {":now": {"N": f"{now:.3f}"}, ":me": {"S": task_id}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _claim_update(self, task_id: str, runner_id: str, now: float, lease: float) -> dict[str, Any]:
        return {
            "TableName": self.table_name,
            "Key": {"id": {"S": task_id}},
            "UpdateExpression": (
                "SET #s = :processing, runnerId = :me, attempts = if_not_exists(attempts, :zero) + :one, "
                "leaseExpiresAt = :lease, startedAt = :stamp, updatedAt = :stamp, "
                # a row written without createdAt is invisible to the status index until it has one
                "createdAt = if_not_exists(createdAt, :stamp) "
                "REMOVE #e, errorKind, commitSha, finishedAt, waitingFor, cancelRequestedAt"
            ),
            "ConditionExpression": (
                "attribute_exists(id) AND (#s = :pending OR (#s = :processing AND "
                "(attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now "
                "OR leaseExpiresAt > :horizon)))"
            ),
            "ExpressionAttributeNames": {"#s": "status", "#e": "error"},
            "ExpressionAttributeValues": {
                ":processing": {"S": TaskStatus.PROCESSING.value},
                ":pending": {"S": TaskStatus.PENDING.value},
                ":me": {"S": runner_id},
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
                ":lease": {"N": f"{lease:.3f}"},
                ":now": {"N": f"{now:.3f}"},
                ":horizon": {"N": f"{now + LEASE_HORIZON_SECONDS:.3f}"},
                ":stamp": {"S": utc_now_iso()},
            },
        }

    def _renew(self, claim: Claim, lease_seconds: float) -> float:
        now = self._clock()
        lease = now + lease_seconds
        update = self._owned_params(
            claim,
            "SET leaseExpiresAt = :lease",
            {":lease": {"N": f"{lease:.3f}"}, ":now": {"N": f"{now:.3f}"}},
        )
        # a cancel request refuses the renewal: the runner sees it within one heartbeat
        update["ConditionExpression"] += (
            " AND leaseExpiresAt > :now AND attribute_not_exists(cancelRequestedAt)"
        )
        update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if claim.branch is None:
            try:
                self._ddb.update_item(**update)
            except ClientError as e:
                if _is_conditional_failure(e):
                    self._renewal_refused(claim, _refused_item(e), e)
                raise
            return lease
        lock = {
            "TableName": self.branch_locks_table,
            "Key": {"branch": {"S": claim.branch}},
            "UpdateExpression": "SET leaseExpiresAt = :lease, expiresAt = :ttl",
            "ConditionExpression": "taskId = :task AND runnerId = :me",
            "ExpressionAttributeValues": {
                ":lease": {"N": f"{lease:.3f}"},
                ":ttl": {"N": str(int(lease) + LOCK_TTL_SECONDS)},
                ":task": {"S": claim.task_id},
                ":me": {"S": claim.runner_id},
            },
        }
        try:
            self._transact([{"Update": update}, {"Update": lock}])
        except ClientError as e:
            codes = _cancellation_codes(e)
            if codes[:1] == ["ConditionalCheckFailed"]:
                self._renewal_refused(claim, _cancelled_item(e, 0), e)
            if "ConditionalCheckFailed" in codes:
                raise LeaseLostError(claim.task_id) from e
            raise
        return lease

    @staticmethod
    def _renewal_refused(claim: Claim, row: dict[str, Any], err: Exception) -> None:
        """Why the row refused a renewal: a cancel of this very attempt (CancelRequestedError), or
        the row is no longer this claim's (LeaseLostError)."""
        own = (
            row.get("status") == TaskStatus.PROCESSING.value
            and row.get("runnerId") == claim.runner_id
            and row.get("attempts") == claim.attempt
        )
        if own and row.get("cancelRequestedAt"):
            raise CancelRequestedError(claim.task_id) from err
        raise LeaseLostError(claim.task_id) from err

    def _record(self, claim: Claim, fields: dict[str, Any], live: bool = False) -> None:
        wire = wire_fields(fields)
        gone = [k for k, v in wire.items() if v is None]  # None: the field goes
        wire = {k: v for k, v in wire.items() if v is not None}
        names = {f"#f{i}": k for i, k in enumerate(wire)}
        values = {f":v{i}": v for i, v in enumerate(wire.values())}
        sets = "".join(f"{n} = {v}, " for n, v in zip(names, values, strict=True))
        removes = {f"#g{i}": k for i, k in enumerate(gone)}
        extra = {":stamp": {"S": utc_now_iso()}}
        if live:
            extra[":now"] = {"N": f"{self._clock():.3f}"}
        params = self._owned_params(
            claim,
            f"SET {sets}updatedAt = :stamp" + (f" REMOVE {', '.join(removes)}" if removes else ""),
            {**{k: to_dynamodb({"x": v})["x"] for k, v in values.items()}, **extra},
            extra_names={**names, **removes},
        )
        if live:  # only under a lease that still holds (nobody may have reclaimed the row yet)
            params["ConditionExpression"] += " AND leaseExpiresAt > :now"
        self._owned_write(claim, params)

    def _end(self, claim: Claim, update: Update) -> None:
        """A write that ends the claim (complete, fail, release), then the branch lock's removal.
        The status write stands on its own: a lock already gone, or taken over by another task,
        must not undo it, so the removal is a separate conditional delete."""
        sets = {"status": update.status.value, **update.sets}
        names = {f"#f{i}": k for i, k in enumerate(sets)}
        values = {f":v{i}": v for i, v in enumerate(sets.values())}
        removes = {f"#r{i}": k for i, k in enumerate(update.removes)}
        expr = "SET " + ", ".join(f"{n} = {v}" for n, v in zip(names, values, strict=True))
        if removes:
            expr += " REMOVE " + ", ".join(removes)
        params = self._owned_params(
            claim,
            expr,
            {k: to_dynamodb({"x": v})["x"] for k, v in values.items()},
            extra_names={**names, **removes},
        )
        self._owned_write(claim, params)
        if claim.branch is not None:
            self._unlock(claim.branch, claim.task_id, claim.runner_id)

    def note_waiting(self, task_id: str, note: str, attempts: int | None) -> bool:
        """Say on a row what it waits for (``waitingFor``, e.g. its branch held by another task).

        One conditional write that applies only to the row as the caller read it: no claim made
        since (``attempts`` as read, None for never claimed), still pending or processing under a
        lease that has passed (a dead runner's task refused by the branch lock). So it never undoes
        a claim, and a row that stays pending gives the stream no reason to signal it again.
        Returns whether it was written; the claim removes the note."""
        if attempts is None:
            seen, values = "attribute_not_exists(attempts)", {}
        else:
            seen, values = "attempts = :seen", {":seen": {"N": str(attempts)}}
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression="SET waitingFor = :note, updatedAt = :stamp",
                ConditionExpression=f"attribute_exists(id) AND {seen} AND (#s = :pending OR "
                "(#s = :processing AND leaseExpiresAt < :now))",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    **values,
                    ":note": {"S": note[:ERROR_CHARS]},
                    ":stamp": {"S": utc_now_iso()},
                    ":pending": {"S": TaskStatus.PENDING.value},
                    ":processing": {"S": TaskStatus.PROCESSING.value},
                    ":now": {"N": f"{self._clock():.3f}"},
                },
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                return False
            raise
        return True

    def fail_unowned(self, task_id: str, error: str, kind: ErrorKind = ErrorKind.GAVE_UP) -> bool:
        """Mark a row failed that no live runner will finish (dead letter, unclaimable garbage),
        with ``error`` and its ``errorKind`` in the one conditional write.

        Leaves rows that already ended, and rows under a live lease, alone (a lease more than
        ``LEASE_HORIZON_SECONDS`` ahead is none); returns whether it changed. The branch lock the
        row's last claim may still hold is freed with it.
        """
        stamp = utc_now_iso()
        now = self._clock()
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression="SET #s = :failed, #e = :err, errorKind = :kind, finishedAt = :stamp, "
                "updatedAt = :stamp "
                "REMOVE leaseExpiresAt, waitingFor",
                # never pull a row from under a runner that still holds a live lease on it
                ConditionExpression="attribute_exists(id) AND #s <> :complete AND #s <> :failed AND "
                "(#s <> :processing OR attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now "
                "OR leaseExpiresAt > :horizon)",
                ExpressionAttributeNames={"#s": "status", "#e": "error"},
                ExpressionAttributeValues={
                    ":failed": {"S": TaskStatus.FAILED.value},
                    ":complete": {"S": TaskStatus.COMPLETE.value},
                    ":processing": {"S": TaskStatus.PROCESSING.value},
                    ":now": {"N": f"{now:.3f}"},
                    ":horizon": {"N": f"{now + LEASE_HORIZON_SECONDS:.3f}"},
                    ":err": {"S": error[:ERROR_CHARS]},
                    ":kind": {"S": ErrorKind(kind).value},
                    ":stamp": {"S": stamp},
                },
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                return False
            raise
        self._unlock_for(task_id)
        return True

    def _unlock_for(self, task_id: str) -> None:
        """Free the lock a failed task's last claim may hold (whatever runner made it)."""
        try:
            branch = self.get_row(task_id).get("branch")
        except TaskNotFoundError:
            return
        if isinstance(branch, str) and _lockable(branch):
            self._unlock(branch, task_id, None)

    def reset(self, task_id: str) -> None:
        """failed|complete -> pending (``aipm task retry``); the stream sees the MODIFY and signals
        again. Raises TaskNotFoundError when there is no such row, TransitionError (saying its
        status) when it has not ended."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression="SET #s = :pending, updatedAt = :stamp "
                "REMOVE leaseExpiresAt, runnerId, cancelRequestedAt",
                ConditionExpression="#s = :complete OR #s = :failed",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":pending": {"S": TaskStatus.PENDING.value},
                    ":complete": {"S": TaskStatus.COMPLETE.value},
                    ":failed": {"S": TaskStatus.FAILED.value},
                    ":stamp": {"S": utc_now_iso()},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if not _is_conditional_failure(e):
                raise
            old: Any = dict(e.response).get("Item")  # the row as it was (ALL_OLD); absent: no row
            if not old:
                raise TaskNotFoundError(task_id) from e
            status = from_dynamodb(old).get("status")
            raise TransitionError(f"task {task_id!r} is {status}, not complete or failed") from e

    def cancel(self, task_id: str) -> CancelOutcome:
        """Stop a task (``aipm task cancel``). A row no live runner holds (pending, or processing
        under a lease that ran out) ends ``failed`` with ``errorKind`` ``cancelled`` in one conditional
        write; a running one gets ``cancelRequestedAt``, which refuses its runner's next renewal, so
        the runner stops the agent, keeps its work on the WIP ref and fails the row ``cancelled``.

        Raises TaskNotFoundError, and TransitionError (its message a sentence) for a row that has
        already ended."""
        for _ in range(3):  # the row may change between the two writes (a lease running out)
            now = self._clock()
            stamp = utc_now_iso()
            old = self._cancel_write(
                task_id,
                "SET #s = :failed, #e = :err, errorKind = :kind, finishedAt = :stamp, updatedAt = :stamp "
                "REMOVE leaseExpiresAt, waitingFor, cancelRequestedAt",
                "#s = :pending OR (#s = :processing AND (attribute_not_exists(leaseExpiresAt) "
                "OR leaseExpiresAt < :now OR leaseExpiresAt > :horizon))",
                {
                    ":failed": {"S": TaskStatus.FAILED.value},
                    ":pending": {"S": TaskStatus.PENDING.value},
                    ":err": {"S": CANCELLED_ERROR},
                    ":kind": {"S": ErrorKind.CANCELLED.value},
                    ":stamp": {"S": stamp},
                    ":horizon": {"N": f"{now + LEASE_HORIZON_SECONDS:.3f}"},
                },
                now,
            )
            if old is None:
                return CancelOutcome.CANCELLED
            self._refuse_cancel(task_id, old)
            old = self._cancel_write(
                task_id,
                "SET cancelRequestedAt = if_not_exists(cancelRequestedAt, :stamp), updatedAt = :stamp",
                "#s = :processing AND leaseExpiresAt >= :now AND leaseExpiresAt <= :horizon",
                {":stamp": {"S": stamp}, ":horizon": {"N": f"{now + LEASE_HORIZON_SECONDS:.3f}"}},
                now,
            )
            if old is None:
                return CancelOutcome.REQUESTED
            self._refuse_cancel(task_id, old)
        raise TransitionError(f"task {task_id!r} keeps changing; try the cancel again")

    def _cancel_write(
        self, task_id: str, update: str, condition: str, values: dict[str, Any], now: float
    ) -> dict[str, Any] | None:
        """One conditional write of a cancel: None when it landed, else the row as it was ({} for
        none), returned by the refusal itself (no read)."""
        names = {"#s": "status"}
        if "#e" in update:
            names["#e"] = "error"
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression=update,
                ConditionExpression=f"attribute_exists(id) AND ({condition})",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    **values,
                    ":processing": {"S": TaskStatus.PROCESSING.value},
                    ":now": {"N": f"{now:.3f}"},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                return _refused_item(e)
            raise
        return None

    @staticmethod
    def _refuse_cancel(task_id: str, old: dict[str, Any]) -> None:
        """Say why a row cannot be cancelled: no such task, or one that has ended."""
        if not old:
            raise TaskNotFoundError(task_id)
        status = old.get("status")
        if status == TaskStatus.COMPLETE.value:
            sha = old.get("commitSha")
            pushed = f" (pushed {str(sha)[:12]})" if isinstance(sha, str) and sha else ""
            raise TransitionError(
                f"task {task_id!r} is already complete{pushed}: there is nothing to cancel; "
                "revert its commit on the branch to undo it"
            )
        if status == TaskStatus.FAILED.value:
            kind = old.get("errorKind")
            raise TransitionError(
                f"task {task_id!r} has already ended failed"
                + (f" ({kind})" if isinstance(kind, str) and kind else "")
                + ": there is nothing to cancel"
            )
        if status not in (TaskStatus.PENDING.value, TaskStatus.PROCESSING.value):
            raise TransitionError(f"task {task_id!r} has status {status!r}, which cannot be cancelled")

    def _owned_params(
        self,
        claim: Claim,
        update: str,
        values: dict[str, Any],
        extra_names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """An update of a row this claim owns (status processing, its runner id and attempt)."""
        return {
            "TableName": self.table_name,
            "Key": {"id": {"S": claim.task_id}},
            "UpdateExpression": update,
            "ConditionExpression": "#s_ = :processing_ AND runnerId = :me_ AND attempts = :attempt_",
            "ExpressionAttributeNames": {"#s_": "status", **(extra_names or {})},
            "ExpressionAttributeValues": {
                **values,
                ":processing_": {"S": TaskStatus.PROCESSING.value},
                ":me_": {"S": claim.runner_id},
                ":attempt_": {"N": str(claim.attempt)},
            },
        }

    def _owned_write(self, claim: Claim, params: dict[str, Any]) -> None:
        try:
            self._ddb.update_item(**params)
        except ClientError as e:
            if _is_conditional_failure(e):
                raise LeaseLostError(claim.task_id) from e
            raise

    # -- branch locks ------------------------------------------------------------------------
    def _unlock(self, branch: str, task_id: str, runner_id: str | None) -> None:
        """Delete the lock of ``branch`` held for ``task_id`` (by ``runner_id`` when given); one
        that is gone or someone else's is left alone, and a failed delete only delays the next task
        to the lock's lease."""
        condition = "taskId = :task"
        values = {":task": {"S": task_id}}
        if runner_id is not None:
            condition += " AND runnerId = :me"
            values[":me"] = {"S": runner_id}
        try:
            self._ddb.delete_item(
                TableName=self.branch_locks_table,
                Key={"branch": {"S": branch}},
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as e:
            if not _is_conditional_failure(e):
                logger.warning("lock of branch %s not released (%s); it ends with its lease", branch, e)
        except BotoCoreError as e:
            logger.warning("lock of branch %s not released (%s); it ends with its lease", branch, e)

    def _transact(self, items: list[dict[str, Any]]) -> None:
        """One TransactWriteItems. Retried a few times when a concurrent transaction on one of
        its items was all that cancelled it (DynamoDB's TransactionConflict); each call has its
        own idempotency token, so botocore's own retries of it cannot apply it twice."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._ddb.transact_write_items(TransactItems=items, ClientRequestToken=uuid.uuid4().hex)
                return
            except ClientError as e:
                codes = set(_cancellation_codes(e)) - {"None"}
                if attempt == CONFLICT_RETRIES or codes != {"TransactionConflict"}:
                    raise
            time.sleep(random.uniform(0.02, 0.05) * 2**attempt)


def _message(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Message") or err)
