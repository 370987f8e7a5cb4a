"""The task row contract: seed names and values, add-only fields, DynamoDB JSON both ways."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.models import (
    MAX_ATTEMPTS,
    InvalidRow,
    Task,
    TaskSignal,
    TaskStatus,
    from_dynamodb,
    read_row,
    to_dynamodb,
    utc_now_iso,
)

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


BIG = "1" * 39  # one digit more than boto3's decimal context reads: it raises decimal.Inexact


def test_plain_values_of_a_number_beyond_38_digits_are_its_exact_int() -> None:
    """``from_dynamodb`` (operators, the dead letter, tests) reads any row: a 39-digit Number is the
    int it holds, and DynamoDB's own ``1E+100`` spelling too."""
    plain = from_dynamodb({**SEED_ROW, "prNumber": {"N": BIG}, "leaseExpiresAt": {"N": "1E+100"}})
    assert plain["prNumber"] == int(BIG) and plain["leaseExpiresAt"] == 10**100
    assert from_dynamodb({"n": {"L": [{"N": "9" * 40}]}, "s": {"NS": [BIG]}}) == {
        "n": [int("9" * 40)],
        "s": {int(BIG)},
    }


@pytest.mark.parametrize("field", ["prNumber", "attempts", "leaseExpiresAt"])
def test_a_row_with_a_number_beyond_38_digits_is_invalid_naming_the_field(field: str) -> None:
    row = read_row({**SEED_ROW, field: {"N": BIG}})
    assert isinstance(row, InvalidRow) and row.id == "task-1" and row.status == "pending"
    assert row.reason.startswith(f"invalid task row: {field}: a number of 39 digits"), row.reason


def test_a_number_beyond_38_digits_outside_the_tasks_fields_does_not_spoil_the_row() -> None:
    """What a backend keeps beside the task's own fields is not the task's to read."""
    assert isinstance(read_row({**SEED_ROW, "backendScore": {"N": BIG}}), Task)


@pytest.mark.parametrize("raw", ["1.5", "-1", "9" * 38, "1000001"])
def test_attempts_that_is_not_a_small_non_negative_integer_is_refused_saying_what_it_is(raw: str) -> None:
    row = read_row({**SEED_ROW, "attempts": {"N": raw}})
    assert isinstance(row, InvalidRow)
    assert row.reason.startswith("invalid task row: attempts: must be a whole number from 0 to 1000000")
    assert raw[:20] in row.reason


@pytest.mark.parametrize("raw", [{"BOOL": True}, {"S": "3"}, {"NULL": True}])
def test_attempts_of_another_type_is_refused_too(raw: dict) -> None:
    row = read_row({**SEED_ROW, "attempts": raw})
    assert isinstance(row, InvalidRow) and row.reason.startswith("invalid task row: attempts: must be")


def test_attempts_up_to_the_limit_are_read() -> None:
    assert Task.from_item({**SEED_ROW, "attempts": {"N": str(MAX_ATTEMPTS)}}).attempts == MAX_ATTEMPTS


def test_a_reason_never_quotes_control_characters_from_the_row() -> None:
    row = read_row({**SEED_ROW, "attempts": {"S": "\x1b]52;c;aGk=\x07\x1b[2J\x9b"}})
    assert isinstance(row, InvalidRow) and "\x1b" not in row.reason and "\x9b" not in row.reason
