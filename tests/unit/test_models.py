"""The task row contract: seed names and values, add-only fields, DynamoDB JSON both ways."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.models import Task, TaskSignal, TaskStatus, from_dynamodb, to_dynamodb, utc_now_iso

pytestmark = pytest.mark.unit

SEED_ROW = {
    "id": {"S": "task-1"},
    "title": {"S": "Add login validation"},
    "details": {"S": "Implement email/password validation..."},
    "branch": {"S": "feature/add-login-validation"},
    "prNumber": {"N": "42"},
    "prUrl": {"S": "https://github.com/example/aipm/pull/42"},
    "status": {"S": "pending"},
    "createdAt": {"S": "2026-11-25T10:00:00.000Z"},
    "updatedAt": {"S": "2026-11-25T10:00:00.000Z"},
}


def test_the_seed_row_parses_with_its_own_names() -> None:
    task = Task.from_item(SEED_ROW)
    assert task.id == "task-1" and task.pr_number == 42 and task.status is TaskStatus.PENDING
    assert task.attempts == 0 and task.commit_sha is None


def test_status_values_are_the_seeds_four() -> None:
    assert [s.value for s in TaskStatus] == ["pending", "processing", "complete", "failed"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": {"S": "queued"}}, "status"),
        ({"prNumber": {"S": "forty-two"}}, "prNumber"),
        ({"title": {"N": "7"}}, "title"),
        ({"branch": None}, "branch"),
        ({"title": None}, "title"),
    ],
)
def test_malformed_rows_name_the_bad_field(change: dict, field: str) -> None:
    item = {**SEED_ROW, **{k: v for k, v in change.items() if v is not None}}
    for k, v in change.items():
        if v is None:
            item.pop(k)
    with pytest.raises(ValidationError) as err:
        Task.from_item(item)
    assert field in {str(e["loc"][0]) for e in err.value.errors()}


def test_numeric_string_pr_number_is_accepted() -> None:
    assert Task.from_item({**SEED_ROW, "prNumber": {"S": "42"}}).pr_number == 42


def test_dynamodb_json_round_trip_keeps_types() -> None:
    plain = from_dynamodb(SEED_ROW)
    assert plain["prNumber"] == 42 and isinstance(plain["prNumber"], int)
    assert to_dynamodb(plain) == SEED_ROW


def test_prompt_names_title_details_branch_and_pr() -> None:
    prompt = Task.from_item(SEED_ROW).prompt()
    for part in ("Add login validation", "email/password", "feature/add-login-validation", "pull/42", "#42"):
        assert part in prompt


def test_signal_body_is_task_id_and_reason() -> None:
    assert json.loads(TaskSignal(task_id="t", reason="insert").body()) == {"taskId": "t", "reason": "insert"}
    assert json.loads(TaskSignal(task_id="t", reason="again", requeues=1).body())["requeues"] == 1
    with pytest.raises(ValidationError):
        TaskSignal.model_validate_json('{"taskId": ""}')


def test_timestamps_are_iso_utc_with_millis() -> None:
    stamp = utc_now_iso()
    assert len(stamp) == 24 and stamp.endswith("Z") and stamp[10] == "T"
