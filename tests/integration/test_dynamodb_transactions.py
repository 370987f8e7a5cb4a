"""A cancelled TransactWriteItems on the embedded DynamoDB changes nothing, as in DynamoDB, and is
undone in place: moto's whole-table backups are not made (their cost grew with every stream record
the table ever had, on every claim and renewal)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models import dynamodb_backends

from shared.models import utc_now_iso
from tests.fixtures import unique

pytestmark = pytest.mark.integration


def _moto_table(name: str) -> Any:
    for regions in dynamodb_backends.values():
        backend = dict.get(regions, "us-east-1")
        if backend is not None and name in backend.tables:
            return backend.tables[name]
    raise LookupError(name)


def _row(task_id: str, branch: str) -> dict[str, Any]:
    now = utc_now_iso()
    return {
        "id": {"S": task_id},
        "title": {"S": "t"},
        "branch": {"S": branch},
        "status": {"S": "pending"},
        "createdAt": {"S": now},
        "updatedAt": {"S": now},
    }


def _cancelled(ddb: Any, items: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ClientError) as err:
        ddb.transact_write_items(TransactItems=items)
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    return [str(r.get("Code")) for r in err.value.response.get("CancellationReasons", [])]


def test_a_refused_claim_leaves_the_row_the_lock_and_the_stream_as_they_were(ddb: Any, deployed: Any) -> None:
    """The claim's update of the row is applied by moto before the lock's put fails its condition;
    the cancellation puts the row back as it was, writes no stream record, and the tables stay the
    same objects (nothing was swapped for a copy)."""
    # given: a pending row and its branch held by another task
    table, locks = deployed.table_name, deployed.branch_locks_table
    task_id, branch = unique("refused"), f"feature/{unique('held')}"
    ddb.put_item(TableName=table, Item=_row(task_id, branch))
    ddb.put_item(TableName=locks, Item={"branch": {"S": branch}, "taskId": {"S": "holder"}})
    queue, lock_table = _moto_table(table), _moto_table(locks)
    records = len(queue.stream_shard.items)
    # when: a claim takes the row and the lock in one transaction
    codes = _cancelled(
        ddb,
        [
            {
                "Update": {
                    "TableName": table,
                    "Key": {"id": {"S": task_id}},
                    "UpdateExpression": "SET #s = :p, runnerId = :me",
                    "ConditionExpression": "#s = :pending",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {
                        ":p": {"S": "processing"},
                        ":me": {"S": "runner-b"},
                        ":pending": {"S": "pending"},
                    },
                }
            },
            {
                "Put": {
                    "TableName": locks,
                    "Item": {"branch": {"S": branch}, "taskId": {"S": task_id}},
                    "ConditionExpression": "attribute_not_exists(branch)",
                }
            },
        ],
    )
    # then: refused by the lock alone; nothing changed, no record written, the same tables
    assert codes == ["None", "ConditionalCheckFailed"]
    row = ddb.get_item(TableName=table, Key={"id": {"S": task_id}}, ConsistentRead=True)["Item"]
    assert row["status"] == {"S": "pending"} and "runnerId" not in row
    lock = ddb.get_item(TableName=locks, Key={"branch": {"S": branch}}, ConsistentRead=True)["Item"]
    assert lock["taskId"] == {"S": "holder"}
    assert len(queue.stream_shard.items) == records
    assert _moto_table(table) is queue and _moto_table(locks) is lock_table


def test_a_cancelled_transaction_that_created_an_item_leaves_none_and_later_writes_still_stream(
    ddb: Any, deployed: Any
) -> None:
    # given: a transaction whose first part puts a new row and whose second part fails
    table = deployed.table_name
    created, absent = unique("created"), unique("absent")
    queue = _moto_table(table)
    records = len(queue.stream_shard.items)
    # when
    codes = _cancelled(
        ddb,
        [
            {"Put": {"TableName": table, "Item": _row(created, "feature/a")}},
            {
                "ConditionCheck": {
                    "TableName": table,
                    "Key": {"id": {"S": absent}},
                    "ConditionExpression": "attribute_exists(id)",
                }
            },
        ],
    )
    # then: no row, no record; a write after it streams as usual, after the records before it
    assert codes == ["None", "ConditionalCheckFailed"]
    assert "Item" not in ddb.get_item(TableName=table, Key={"id": {"S": created}}, ConsistentRead=True)
    assert len(queue.stream_shard.items) == records
    later = unique("later")
    ddb.put_item(TableName=table, Item=_row(later, "feature/b"))
    assert len(queue.stream_shard.items) == records + 1
    last = queue.stream_shard.items[-1].to_json()
    assert last["eventName"] == "INSERT" and last["dynamodb"]["Keys"]["id"] == {"S": later}
