"""The task store: every status transition is one conditional DynamoDB write.

Conditions, not locks, make ownership safe across any number of runners: a claim succeeds for
exactly one of them, and a runner that lost its lease cannot complete, fail or renew the row.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from shared.models import TaskStatus, from_dynamodb, to_dynamodb, utc_now_iso

STATUS_INDEX = "status-createdAt-index"
LOG_TAIL_CHARS = 4000
ERROR_CHARS = 2000
FILTERED_PAGE = 100  # rows read per Query when a filter drops some of them


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


def _is_conditional_failure(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class TaskStore:
    """Reads and transitions rows of the queue table through one injected DynamoDB client."""

    def __init__(self, dynamodb: Any, table_name: str, clock: Any = time.time) -> None:
        self._ddb = dynamodb
        self.table_name = table_name
        self._clock = clock

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

        DynamoDB applies ``Limit`` to the rows it reads, before the filter: with a filter, pages of
        ``FILTERED_PAGE`` rows are read until ``limit`` rows matched (or the index ends)."""
        expr = "#s = :s"
        values: dict[str, Any] = {":s": {"S": status.value}}
        if created_before:
            expr += " AND createdAt < :before"
            values[":before"] = {"S": created_before}
        items: list[dict] = []
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
            items += [from_dynamodb(i) for i in resp.get("Items", [])]
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

    # -- transitions -------------------------------------------------------------------------
    def claim(self, task_id: str, runner_id: str, lease_seconds: float) -> dict[str, Any]:
        """pending -> processing, or reclaim a processing row whose lease has expired.

        Returns the row after the claim. Raises ClaimLostError when the row is not claimable.
        """
        now = self._clock()
        stamp = utc_now_iso()
        try:
            resp = self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression=(
                    "SET #s = :processing, runnerId = :me, attempts = if_not_exists(attempts, :zero) + :one, "
                    "leaseExpiresAt = :lease, startedAt = :stamp, updatedAt = :stamp "
                    "REMOVE #e, commitSha, finishedAt"
                ),
                ConditionExpression=(
                    "attribute_exists(id) AND (#s = :pending OR (#s = :processing AND "
                    "(attribute_not_exists(leaseExpiresAt) OR leaseExpiresAt < :now)))"
                ),
                ExpressionAttributeNames={"#s": "status", "#e": "error"},
                ExpressionAttributeValues={
                    ":processing": {"S": TaskStatus.PROCESSING.value},
                    ":pending": {"S": TaskStatus.PENDING.value},
                    ":me": {"S": runner_id},
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                    ":lease": {"N": f"{now + lease_seconds:.3f}"},
                    ":now": {"N": f"{now:.3f}"},
                    ":stamp": {"S": stamp},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                raise ClaimLostError(task_id) from e
            raise
        return from_dynamodb(resp["Attributes"])

    def renew(self, task_id: str, runner_id: str, attempt: int, lease_seconds: float) -> float:
        """Extend this runner's lease; returns the new expiry. Raises LeaseLostError."""
        lease = self._clock() + lease_seconds
        self._owned_update(
            task_id, runner_id, attempt, "SET leaseExpiresAt = :lease", {":lease": {"N": f"{lease:.3f}"}}
        )
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
        self._owned_update(
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
        self._owned_update(
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
        self._owned_update(
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
                "REMOVE leaseExpiresAt",
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
        names = {"#s": "status", **(extra_names or {})}
        if "#e" in update:
            names["#e"] = "error"
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key={"id": {"S": task_id}},
                UpdateExpression=update,
                ConditionExpression="#s = :processing_ AND runnerId = :me_ AND attempts = :attempt_",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    **values,
                    ":processing_": {"S": TaskStatus.PROCESSING.value},
                    ":me_": {"S": runner_id},
                    ":attempt_": {"N": str(attempt)},
                },
            )
        except ClientError as e:
            if _is_conditional_failure(e):
                raise LeaseLostError(task_id) from e
            raise
