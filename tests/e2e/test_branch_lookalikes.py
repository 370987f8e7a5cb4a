"""Look-alikes of protected branches, and the runner's own ``kiro-wip``, inserted as rows on the
local stack: a real runner refuses each one, the task ends failed with an error naming the rule,
and nothing reaches the bare remote."""

from __future__ import annotations

from typing import Any

import git
import pytest

from shared import aws
from shared.models import utc_now_iso
from tests.fixtures import unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# the names from issue 9 -> the rule its error must name
LOOKALIKES = {
    "m\u0430in": "mixes scripts",  # Cyrillic а
    "\uff4d\uff41\uff49\uff4e": "protected",  # full-width ｍａｉｎ
    "Main": "protected",
    "MAIN": "protected",
    "main\u200b": "invisible",  # zero-width space
    "Release/1.0": "protected",
    "feature/\u202egnp.exe": "bidirectional",  # right-to-left override
    "kiro-wip": "reserved",
}


def remote_refs(stack: Any) -> set[str]:
    out = git.Repo(stack.config.git_remote).git.for_each_ref("--format=%(refname) %(objectname)")
    return set(out.splitlines())


@pytest.fixture(scope="module")
def refused(local_stack: Any) -> dict[str, Any]:
    """Every look-alike inserted at once (each row's agent would write a file), run to its end."""
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=local_stack.config.endpoint_url)
    table = local_stack.config.table_name
    refs_before = remote_refs(local_stack)
    ids = {}
    for branch in LOOKALIKES:
        task_id = unique("lookalike")
        now = utc_now_iso()
        ddb.put_item(
            TableName=table,
            Item={
                "id": {"S": task_id},
                "title": {"S": "Look-alike branch"},
                "details": {"S": '[fake:write path=pwned.txt text="x"]'},
                "branch": {"S": branch},
                "status": {"S": "pending"},
                "createdAt": {"S": now},
                "updatedAt": {"S": now},
            },
        )
        ids[branch] = task_id

    def read(task_id: str) -> dict[str, Any]:
        item = ddb.get_item(TableName=table, Key={"id": {"S": task_id}}, ConsistentRead=True)["Item"]
        return {k: v.get("S") for k, v in item.items() if "S" in v} | {
            k: v["N"] for k, v in item.items() if "N" in v
        }

    def ended() -> dict[str, dict[str, Any]] | None:
        rows = {branch: read(task_id) for branch, task_id in ids.items()}
        return rows if all(r["status"] in ("complete", "failed") for r in rows.values()) else None

    rows = wait_until(ended, 90, interval=0.3, what="every look-alike task to end")
    return {"rows": rows, "refs_before": refs_before, "refs_after": remote_refs(local_stack)}


@pytest.mark.parametrize(("branch", "rule"), list(LOOKALIKES.items()), ids=[ascii(b) for b in LOOKALIKES])
def test_lookalike_branch_is_refused_naming_the_rule(refused: dict[str, Any], branch: str, rule: str) -> None:
    row = refused["rows"][branch]
    assert row["status"] == "failed", row
    assert rule in row["error"], row["error"]
    assert "commitSha" not in row


def test_nothing_of_the_lookalikes_reaches_the_remote(refused: dict[str, Any]) -> None:
    assert refused["refs_after"] == refused["refs_before"]
