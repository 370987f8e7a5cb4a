"""The embedded DynamoDB refuses what DynamoDB refuses for the template's keys and index keys,
so a row that AWS would never accept cannot reach the local stack (and break its listings)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.motoserver import install_fast_attribute_values
from shared.models import utc_now_iso
from tests import prefork
from tests.fixtures import ROOT, AwsCli, unique

pytestmark = pytest.mark.integration


def _row(task_id: str, **override: dict) -> dict:
    now = utc_now_iso()
    return {
        "id": {"S": task_id},
        "title": {"S": "Add login validation"},
        "branch": {"S": "feature/twin"},
        "status": {"S": "pending"},
        "createdAt": {"S": now},
        "updatedAt": {"S": now},
        **override,
    }


def _refusal(call: Any) -> str:
    with pytest.raises(ClientError) as err:
        call()
    assert err.value.response["Error"]["Code"] == "ValidationException"
    return str(err.value.response["Error"]["Message"])


def test_put_item_with_a_numeric_created_at_is_refused_like_dynamodb(
    moto_endpoint: str, deployed: Any
) -> None:
    """The seed's operators insert rows with the aws CLI: a createdAt written as a Number is an
    index key of the wrong type, which DynamoDB refuses, so the local stack refuses it too."""
    cli = AwsCli(moto_endpoint, deployed.table_name)
    task_id = unique("numeric-created")
    item = _row(task_id, createdAt={"N": "1796153400"})
    out = subprocess.run(
        [
            cli.exe,
            "--endpoint-url",
            moto_endpoint,
            "--region",
            "us-east-1",
            "dynamodb",
            "put-item",
            "--table-name",
            deployed.table_name,
            "--item",
            json.dumps(item),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "Type mismatch for Index Key createdAt Expected: S Actual: N" in out.stderr
    assert cli.get(task_id) == {}


def test_every_kind_of_put_is_checked_and_a_row_without_the_index_key_is_accepted(
    ddb: Any, deployed: Any
) -> None:
    table = deployed.table_name
    bad_status = _row(unique("bad-status"), status={"N": "1"})
    message = _refusal(lambda: ddb.put_item(TableName=table, Item=bad_status))
    assert "Index Key status Expected: S Actual: N IndexName: status-createdAt-index" in message
    empty = _row(unique("empty-status"), status={"S": ""})
    assert "empty string" in _refusal(lambda: ddb.put_item(TableName=table, Item=empty))
    batch = _row(unique("batch"), createdAt={"N": "1"})
    _refusal(lambda: ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": batch}}]}))
    txn = _row(unique("txn"), createdAt={"N": "1"})
    _refusal(lambda: ddb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": txn}}]))
    update_id = unique("update")
    ddb.put_item(TableName=table, Item=_row(update_id))
    _refusal(
        lambda: ddb.update_item(
            TableName=table,
            Key={"id": {"S": update_id}},
            UpdateExpression="SET createdAt = :n",
            ExpressionAttributeValues={":n": {"N": "5"}},
        )
    )
    for item in (bad_status, empty, batch, txn):
        assert "Item" not in ddb.get_item(TableName=table, Key={"id": item["id"]})
    # DynamoDB takes an item without an index key (it is just not in the index)
    no_created = {k: v for k, v in _row(unique("no-created")).items() if k != "createdAt"}
    ddb.put_item(TableName=table, Item=no_created)
    assert "Item" in ddb.get_item(TableName=table, Key={"id": no_created["id"]}, ConsistentRead=True)


def _aipm(moto_endpoint: str, deployed: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "TABLE_NAME": deployed.table_name,
        "BRANCH_LOCKS_TABLE": deployed.branch_locks_table,
        "TASK_QUEUE_URL": "http://127.0.0.1:1/unused",
        "PYTHONPATH": str(ROOT),
    }
    return prefork.aipm(args, timeout=60, env=env, cwd=ROOT)


def test_aipm_list_shows_a_row_it_cannot_parse_as_invalid_and_lists_the_rest(
    moto_endpoint: str, ddb: Any, deployed: Any
) -> None:
    """A row DynamoDB accepts but the code cannot read (no title, a number beyond Python's
    decimal context) is shown as invalid, with the others still listed: never a traceback."""
    table = deployed.table_name
    good, untitled, huge = unique("good"), unique("untitled"), unique("huge")
    ddb.put_item(TableName=table, Item=_row(good, status={"S": "failed"}))
    ddb.put_item(
        TableName=table,
        Item={k: v for k, v in _row(untitled, status={"S": "failed"}).items() if k != "title"},
    )
    ddb.put_item(TableName=table, Item=_row(huge, status={"S": "failed"}, prNumber={"N": "1" * 39}))
    out = _aipm(moto_endpoint, deployed, "list", "--status", "failed", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    rows = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows[good]["status"] == "failed" and "invalid" not in rows[good]
    assert "title" in rows[untitled]["invalid"]
    assert "prNumber" in rows[huge]["invalid"]


def test_aipm_submit_never_overwrites_an_existing_id(moto_endpoint: str, ddb: Any, deployed: Any) -> None:
    """A reused id would re-run a finished task and lose its commitSha: ``aipm submit`` inserts
    with attribute_not_exists(id) and says the id exists, leaving the row as it was."""
    table = deployed.table_name
    task_id = unique("done")
    ddb.put_item(TableName=table, Item=_row(task_id, status={"S": "complete"}, commitSha={"S": "a" * 40}))
    out = _aipm(
        moto_endpoint, deployed, "submit", "--id", task_id, "--title", "again", "--branch", "feature/x"
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"task {task_id!r} already exists" in out.stderr
    row = ddb.get_item(TableName=table, Key={"id": {"S": task_id}}, ConsistentRead=True)["Item"]
    assert row["status"] == {"S": "complete"} and row["commitSha"] == {"S": "a" * 40}
    # a new id goes in as pending
    fresh = unique("fresh")
    out = _aipm(moto_endpoint, deployed, "submit", "--id", fresh, "--title", "new", "--branch", "feature/y")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fresh
    assert ddb.get_item(TableName=table, Key={"id": {"S": fresh}})["Item"]["status"] == {"S": "pending"}


def _raw(endpoint: str, service: str, target: str, body: dict) -> bytes:
    """One JSON-protocol request as a client sends it, and the response's bytes as they come."""
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": target,
            # moto routes by the credential scope's service; it checks no signature
            "Authorization": "AWS4-HMAC-SHA256 "
            f"Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return bytes(resp.read())


def test_reads_answer_the_same_bytes_with_plain_attribute_values_put_as_they_are(
    moto_endpoint: str, ddb: Any, deployed: Any
) -> None:
    """The twin skips moto's member-by-member walk for attribute values already in DynamoDB's JSON
    form (local/motoserver.py); GetItem, Query and a stream read answer byte for byte what moto's
    own walk answers, for every kind of value, binary ones included (which keep the walk)."""
    table, task_id = deployed.table_name, unique("kinds")
    item = _row(
        task_id,
        details={"S": 'ünïcode "quoted" \\ and\nnew lines'},
        empty={"S": ""},
        prNumber={"N": "12345678901234567890.5"},
        draft={"BOOL": False},
        nothing={"NULL": True},
        labels={"SS": ["a", "b"]},
        sizes={"NS": ["1", "2.5"]},
        blob={"B": b"\x00\xffbinary"},
        blobs={"BS": [b"\x01", b"\x02"]},
        steps={"L": [{"S": "one"}, {"N": "2"}, {"L": []}, {"M": {"deep": {"M": {"x": {"BOOL": True}}}}}]},
        meta={"M": {"a": {"S": "b"}, "bin": {"B": b"\x03"}, "empty": {"M": {}}}},
    )
    ddb.put_item(TableName=table, Item=item)
    stream_arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = _raw(
        moto_endpoint, "dynamodb", "DynamoDBStreams_20120810.DescribeStream", {"StreamArn": stream_arn}
    )
    shard_id = json.loads(shard)["StreamDescription"]["Shards"][0]["ShardId"]

    def reads() -> list[bytes]:
        iterator = json.loads(
            _raw(
                moto_endpoint,
                "dynamodb",
                "DynamoDBStreams_20120810.GetShardIterator",
                {"StreamArn": stream_arn, "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"},
            )
        )["ShardIterator"]
        return [
            _raw(
                moto_endpoint,
                "dynamodb",
                "DynamoDB_20120810.GetItem",
                {"TableName": table, "Key": {"id": {"S": task_id}}, "ConsistentRead": True},
            ),
            _raw(
                moto_endpoint,
                "dynamodb",
                "DynamoDB_20120810.Query",
                {
                    "TableName": table,
                    "KeyConditionExpression": "id = :id",
                    "ExpressionAttributeValues": {":id": {"S": task_id}},
                },
            ),
            _raw(
                moto_endpoint,
                "dynamodb",
                "DynamoDBStreams_20120810.GetRecords",
                {"ShardIterator": iterator},
            ),
        ]

    fast = reads()
    install_fast_attribute_values(False)
    try:
        walked = reads()
    finally:
        install_fast_attribute_values(True)
    assert fast[0] == walked[0] and fast[1] == walked[1]
    # the records are the same but for the ids and times a second read of the stream is given
    strip = lambda raw: [  # noqa: E731
        {k: v for k, v in r.items() if k not in ("eventID",)} for r in json.loads(raw)["Records"]
    ]
    assert strip(fast[2]) == strip(walked[2])
    got = json.loads(fast[0])["Item"]
    assert got["steps"]["L"][3] == {"M": {"deep": {"M": {"x": {"BOOL": True}}}}}
    assert got["blob"] == {"B": base64.b64encode(b"\x00\xffbinary").decode()}
    assert got["details"] == item["details"] and got["nothing"] == {"NULL": True}
