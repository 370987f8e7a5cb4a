"""The task store: every status transition is one conditional DynamoDB write.

Conditions make ownership safe across any number of runners: a claim succeeds for exactly one of
them, and a runner that lost its lease cannot complete, fail or renew the row.

One task per branch at a time: with a branch locks table, a claim is one transaction of the row's
conditional claim and a lock item keyed by the task's branch (strongly consistent, unlike the
status index, on which two near-simultaneous claims of one branch can both miss each other). The
lock carries the same lease as the row: it is renewed with the row, deleted when the task ends or
is given back, and a crashed runner's lock is taken over once its lease has passed.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.models import InvalidRow, Task, TaskStatus, from_dynamodb, read_row, to_dynamodb, utc_now_iso

logger = logging.getLogger(__name__)

STATUS_INDEX = "status-createdAt-index"
LOG_TAIL_CHARS = 4000
ERROR_CHARS = 2000
FILTERED_PAGE = 100  # rows read per Query when a filter drops some of them
LOCK_TTL_SECONDS = 24 * 3600  # a lock item outlives its lease by a day; then TTL sweeps it away
CONFLICT_RETRIES = 3  # a transaction cancelled only by a concurrent one touching the same item


class StoreError(Exception):
    """Base of the store's own errors."""


class TaskNotFoundError(StoreError):
    """No row with that id."""


class ClaimLostError(StoreError):
    """The row was not claimable: another runner owns it, or it is not pending."""


class LeaseLostError(StoreError):
    """This runner no longer owns the row (its lease expired and someone else reclaimed it)."""


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
    """DynamoDB refused the claim for the row's own content (e.g. ``attempts`` is not a number):
    retrying cannot help."""


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


def _item_id(item: dict[str, Any]) -> str:
    raw = item.get("id")
    return str(raw.get("S")) if isinstance(raw, dict) else "(no id)"


def _lockable(branch: object) -> bool:
    """A branch that can key a lock item (DynamoDB refuses empty keys). A row without one fails
    its checks right after the claim, so it needs no lock."""
    return isinstance(branch, str) and bool(branch)


class TaskStore:
    """Reads and transitions rows of the queue table through one injected DynamoDB client.

    ``branch_locks_table`` set: one task per branch is enforced here, by a lock item per branch
    taken in the claim's transaction (``BranchBusyError``). Unset (None): claims take no lock and
    the caller keeps one task per branch itself, as before, from the status index (eventually
    consistent: near-simultaneous claims of one branch can both pass such a check).
    """

    def __init__(
        self,
        dynamodb: Any,
        table_name: str,
        clock: Any = time.time,
        *,
        branch_locks_table: str | None = None,
    ) -> None:
        self._ddb = dynamodb
        self.table_name = table_name
        self.branch_locks_table = branch_locks_table or None
        self._clock = clock
        # (task, runner, attempt) -> the branch its claim locked; saves a read per renewal and end
        self._locked: dict[tuple[str, str, int], str] = {}

    @property
    def locks_branches(self) -> bool:
        """Whether claims take a branch lock (and refuse a busy branch with BranchBusyError)."""
        return self.branch_locks_table is not None

    # -- reads -------------------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any]:
        """The row as plain values (strongly consistent). Raises TaskNotFoundError."""
        resp = self._ddb.get_item(TableName=self.table_name, Key={"id": {"S": task_id}}, ConsistentRead=True)
        if "Item" not in resp:
            raise TaskNotFoundError(task_id)
        return from_dynamodb(resp["Item"])

    def list_by_status(
        self,
        status: TaskStatus,
        created_before: str | None = None,
        limit: int = 100,
        branch: str | None = None,
    ) -> list[dict]:
        """Rows of one status from the status GSI, oldest first (never a scan); ``branch`` filters.
        A row whose values cannot be read at all is skipped with a log line, so one bad row never
        stops a listing (``list_tasks`` shows it instead)."""
        rows = []
        for item in self._query_status(status, created_before, limit, branch):
            try:
                rows.append(from_dynamodb(item))
            except (ArithmeticError, TypeError, ValueError) as e:
                logger.warning("skipping unreadable row %s (%s)", _item_id(item), type(e).__name__)
        return rows

    def list_tasks(self, status: TaskStatus, limit: int = 100) -> list[Task | InvalidRow]:
        """Rows of one status as ``Task`` models, oldest first; a row that cannot be one is an
        ``InvalidRow`` in its place, saying why."""
        return [read_row(item) for item in self._query_status(status, None, limit, None)]

    def _query_status(
        self, status: TaskStatus, created_before: str | None, limit: int, branch: str | None
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
    def claim(
        self, task_id: str, runner_id: str, lease_seconds: float, row: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """pending -> processing, or reclaim a processing row whose lease has expired.

        Returns the row after the claim. Raises ClaimLostError when the row is not claimable,
        InvalidRowError when DynamoDB refuses the row's content and, with branch locks,
        BranchBusyError when another task holds the branch. ``row`` is the row as the caller last
        read it (with branch locks, the claim holds only if the row's branch and attempts are
        still the same); without it the store reads the row itself.
        """
        now = self._clock()
        lease = now + lease_seconds
        update = self._claim_update(task_id, runner_id, now, lease)
        if self.branch_locks_table is None:
            return self._claim_row(task_id, update)
        if row is None:
            try:
                row = self.get(task_id)
            except TaskNotFoundError as e:
                raise ClaimLostError(task_id) from e
        branch = row.get("branch")
        if not _lockable(branch):
            return self._claim_row(task_id, update)
        assert isinstance(branch, str)
        attempts = row.get("attempts")
        values = update["ExpressionAttributeValues"]
        update["ConditionExpression"] += " AND branch = :branch"
        values[":branch"] = {"S": branch}
        # the lock records the attempt: the claim holds only on the attempts count read here
        # (a count that is not a number is left to the update, which DynamoDB then refuses)
        attempt = 1
        if attempts is None:
            update["ConditionExpression"] += " AND attribute_not_exists(attempts)"
        elif isinstance(attempts, int) and not isinstance(attempts, bool):
            update["ConditionExpression"] += " AND attempts = :seen"
            values[":seen"] = {"N": str(attempts)}
            attempt = attempts + 1
        lock = {
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
        try:
            self._transact([{"Update": update}, {"Put": lock}])
        except ClientError as e:
            codes = _cancellation_codes(e)
            if codes and codes[0] == "ConditionalCheckFailed":
                raise ClaimLostError(task_id) from e
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                holder = _cancelled_item(e, 1).get("taskId")
                raise BranchBusyError(task_id, branch, holder if isinstance(holder, str) else None) from e
            if "ValidationError" in codes or _error_code(e) == "ValidationException":
                raise InvalidRowError(_message(e)) from e
            raise
        claimed = self.get(task_id)  # a transaction returns no values
        if claimed.get("runnerId") != runner_id:
            raise ClaimLostError(task_id)  # reclaimed since (this runner's lease ran out already)
        if isinstance(claimed.get("attempts"), int):
            self._locked[(task_id, runner_id, claimed["attempts"])] = branch
        return claimed

    def _claim_update(self, task_id: str, runner_id: str, now: float, lease: float) -> dict[str, Any]:
        return {
            "TableName": self.table_name,
            "Key": {"id": {"S": task_id}},
            "UpdateExpression": (
                "SET #s = :processing, runnerId = :me, attempts = if_not_exists(attempts, :zero) + :one, "
                "leaseExpiresAt = :lease, startedAt = :stamp, updatedAt = :stamp, "
                # a row written without createdAt is invisible to the status index until it has one
                "createdAt = if_not_exists(createdAt, :stamp) "
                "REMOVE #e, commitSha, finishedAt, waitingFor"
            ),
            "ConditionExpression": (
                "attribute_exists(id) AND (#s = :pending OR (#s = :processing AND "
                "(attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now)))"
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
                ":stamp": {"S": utc_now_iso()},
            },
        }

    def _claim_row(self, task_id: str, update: dict[str, Any]) -> dict[str, Any]:
        """The claim as one conditional update of the row alone (no branch lock)."""
        try:
            resp = self._ddb.update_item(**update, ReturnValues="ALL_NEW")
        except ClientError as e:
            if _is_conditional_failure(e):
                raise ClaimLostError(task_id) from e
            if _error_code(e) == "ValidationException":
                raise InvalidRowError(_message(e)) from e
            raise
        return from_dynamodb(resp["Attributes"])

    def renew(self, task_id: str, runner_id: str, attempt: int, lease_seconds: float) -> float:
        """Extend this runner's lease (and its branch lock's, in the same transaction); returns the
        new expiry. Raises LeaseLostError when the row or the lock is no longer this runner's, or
        when its lease has already run out: others act on an expired lease without taking the row
        (another task of the branch starts, the lock is taken over, the row is failed as dead), so
        only a claim may give it a new one.

        The new lease counts from before the call: a call that takes long returns a lease that has
        partly or wholly passed. The caller measures that (the pipeline's Heartbeat does)."""
        now = self._clock()
        lease = now + lease_seconds
        update = self._owned_params(
            task_id,
            runner_id,
            attempt,
            "SET leaseExpiresAt = :lease",
            {":lease": {"N": f"{lease:.3f}"}, ":now": {"N": f"{now:.3f}"}},
        )
        update["ConditionExpression"] += " AND leaseExpiresAt > :now"
        branch = self._lock_of(task_id, runner_id, attempt)
        if branch is None:
            self._owned_write(task_id, update)
            return lease
        lock = {
            "TableName": self.branch_locks_table,
            "Key": {"branch": {"S": branch}},
            "UpdateExpression": "SET leaseExpiresAt = :lease, expiresAt = :ttl",
            "ConditionExpression": "taskId = :task AND runnerId = :me",
            "ExpressionAttributeValues": {
                ":lease": {"N": f"{lease:.3f}"},
                ":ttl": {"N": str(int(lease) + LOCK_TTL_SECONDS)},
                ":task": {"S": task_id},
                ":me": {"S": runner_id},
            },
        }
        try:
            self._transact([{"Update": update}, {"Update": lock}])
        except ClientError as e:
            if "ConditionalCheckFailed" in _cancellation_codes(e):
                self._locked.pop((task_id, runner_id, attempt), None)
                raise LeaseLostError(task_id) from e
            raise
        return lease

    def record(self, task_id: str, runner_id: str, attempt: int, **fields: Any) -> None:
        """Set informational fields (baseSha, wipSha, logTail) on a row this runner owns."""
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": v for i, v in enumerate(fields.values())}
        sets = ", ".join(f"{n} = {v}" for n, v in zip(names, values, strict=True))
        self._owned_update(
            task_id,
            runner_id,
            attempt,
            f"SET {sets}, updatedAt = :stamp",
            {**{k: to_dynamodb({"x": v})["x"] for k, v in values.items()}, ":stamp": {"S": utc_now_iso()}},
            extra_names=names,
        )

    def complete(
        self, task_id: str, runner_id: str, attempt: int, commit_sha: str, log_tail: str = ""
    ) -> None:
        """processing -> complete with the pushed commit. The saved work in progress (``wipSha``,
        ``wipRef``) is folded into that commit, so it is cleared: a retry must not resume from it."""
        stamp = utc_now_iso()
        self._owned_final(
            task_id,
            runner_id,
            attempt,
            "SET #s = :complete, commitSha = :sha, logTail = :tail, finishedAt = :stamp, updatedAt = :stamp "
            "REMOVE leaseExpiresAt, #e, wipSha, wipRef",
            {
                ":complete": {"S": TaskStatus.COMPLETE.value},
                ":sha": {"S": commit_sha},
                ":tail": {"S": log_tail[-LOG_TAIL_CHARS:]},
                ":stamp": {"S": stamp},
            },
        )

    def fail(self, task_id: str, runner_id: str, attempt: int, error: str, log_tail: str = "") -> None:
        """processing -> failed with a readable error."""
        stamp = utc_now_iso()
        self._owned_final(
            task_id,
            runner_id,
            attempt,
            "SET #s = :failed, #e = :err, logTail = :tail, finishedAt = :stamp, updatedAt = :stamp "
            "REMOVE leaseExpiresAt",
            {
                ":failed": {"S": TaskStatus.FAILED.value},
                ":err": {"S": error[:ERROR_CHARS] or "failed"},
                ":tail": {"S": log_tail[-LOG_TAIL_CHARS:]},
                ":stamp": {"S": stamp},
            },
        )

    def release(self, task_id: str, runner_id: str, attempt: int, note: str) -> None:
        """processing -> pending: this runner gives the task back (shutdown), with a note in ``error``."""
        self._owned_final(
            task_id,
            runner_id,
            attempt,
            "SET #s = :pending, #e = :note, updatedAt = :stamp REMOVE leaseExpiresAt, runnerId",
            {
                ":pending": {"S": TaskStatus.PENDING.value},
                ":note": {"S": note[:ERROR_CHARS]},
                ":stamp": {"S": utc_now_iso()},
            },
        )

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

    def fail_unowned(self, task_id: str, error: str) -> bool:
        """Mark a row failed that no live runner will finish (dead letter, unclaimable garbage).

        Leaves rows that already ended, and rows under a live lease, alone; returns whether it changed.
        """
        stamp = utc_now_iso()
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression="SET #s = :failed, #e = :err, finishedAt = :stamp, updatedAt = :stamp "
                "REMOVE leaseExpiresAt, waitingFor",
                # never pull a row from under a runner that still holds a live lease on it
                ConditionExpression="attribute_exists(id) AND #s <> :complete AND #s <> :failed AND "
                "(#s <> :processing OR attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now)",
                ExpressionAttributeNames={"#s": "status", "#e": "error"},
                ExpressionAttributeValues={
                    ":failed": {"S": TaskStatus.FAILED.value},
                    ":complete": {"S": TaskStatus.COMPLETE.value},
                    ":processing": {"S": TaskStatus.PROCESSING.value},
                    ":now": {"N": f"{self._clock():.3f}"},
                    ":err": {"S": error[:ERROR_CHARS]},
                    ":stamp": {"S": stamp},
                },
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                return False
            raise
        return True

    def reset(self, task_id: str) -> None:
        """failed|complete -> pending (``aipm retry``); the stream sees the MODIFY and signals again."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression="SET #s = :pending, updatedAt = :stamp REMOVE leaseExpiresAt, runnerId",
                ConditionExpression="#s = :complete OR #s = :failed",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":pending": {"S": TaskStatus.PENDING.value},
                    ":complete": {"S": TaskStatus.COMPLETE.value},
                    ":failed": {"S": TaskStatus.FAILED.value},
                    ":stamp": {"S": utc_now_iso()},
                },
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                raise TransitionError(f"task {task_id!r} is not complete or failed") from e
            raise

    def _owned_update(
        self,
        task_id: str,
        runner_id: str,
        attempt: int,
        update: str,
        values: dict[str, Any],
        extra_names: dict[str, str] | None = None,
    ) -> None:
        self._owned_write(
            task_id, self._owned_params(task_id, runner_id, attempt, update, values, extra_names)
        )

    def _owned_final(
        self, task_id: str, runner_id: str, attempt: int, update: str, values: dict[str, Any]
    ) -> None:
        """A write that ends this runner's hold on the task (complete, fail, release), then the
        branch lock's removal. The status write stands on its own: a lock already gone, or taken
        over by another task, must not undo it, so the removal is a separate conditional delete."""
        branch = self._lock_of(task_id, runner_id, attempt)
        try:
            self._owned_update(task_id, runner_id, attempt, update, values)
        finally:
            self._locked.pop((task_id, runner_id, attempt), None)
        if branch is not None:
            self._unlock(branch, task_id, runner_id)

    def _owned_params(
        self,
        task_id: str,
        runner_id: str,
        attempt: int,
        update: str,
        values: dict[str, Any],
        extra_names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """An update of a row this runner owns (status processing, its runner id and attempt)."""
        names = {"#s": "status", **(extra_names or {})}
        if "#e" in update:
            names["#e"] = "error"
        return {
            "TableName": self.table_name,
            "Key": {"id": {"S": task_id}},
            "UpdateExpression": update,
            "ConditionExpression": "#s = :processing_ AND runnerId = :me_ AND attempts = :attempt_",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {
                **values,
                ":processing_": {"S": TaskStatus.PROCESSING.value},
                ":me_": {"S": runner_id},
                ":attempt_": {"N": str(attempt)},
            },
        }

    def _owned_write(self, task_id: str, params: dict[str, Any]) -> None:
        try:
            self._ddb.update_item(**params)
        except ClientError as e:
            if _is_conditional_failure(e):
                raise LeaseLostError(task_id) from e
            raise

    # -- branch locks ------------------------------------------------------------------------
    def _lock_of(self, task_id: str, runner_id: str, attempt: int) -> str | None:
        """The branch this claim locked (None: no lock table, or a row without a lockable branch).
        A claim this store did not make is looked up on the row; its branch does not change."""
        if self.branch_locks_table is None:
            return None
        branch = self._locked.get((task_id, runner_id, attempt))
        if branch is None:
            try:
                found = self.get(task_id).get("branch")
            except TaskNotFoundError as e:
                raise LeaseLostError(task_id) from e
            branch = found if isinstance(found, str) and _lockable(found) else None
        return branch

    def _unlock(self, branch: str, task_id: str, runner_id: str) -> None:
        """Delete this runner's lock of ``branch`` for ``task_id``; one that is gone or someone
        else's is left alone, and a failed delete only delays the next task to the lock's lease."""
        try:
            self._ddb.delete_item(
                TableName=self.branch_locks_table,
                Key={"branch": {"S": branch}},
                ConditionExpression="taskId = :task AND runnerId = :me",
                ExpressionAttributeValues={":task": {"S": task_id}, ":me": {"S": runner_id}},
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
