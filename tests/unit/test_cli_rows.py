"""How ``aipm`` shows a row (no network): times a person reads, text cleaned, odd values survived."""

from __future__ import annotations

import datetime as dt

import pytest

from ec2_runner.commands import rows
from ec2_runner.commands.submit import progress_line
from shared.models import ErrorKind, Task
from shared.task_checks import InvalidSubmission, check_submission, refusal

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 25, 10, 5, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("seconds", "said"), [(42, "42 s"), (185, "3 min 5 s"), (7800, "2 h 10 min"), (273600, "3 d 4 h")]
)
def test_a_span_reads_as_a_person_says_it(seconds: float, said: str) -> None:
    assert rows.span(seconds) == said


def test_a_stamp_reads_as_how_long_ago_and_a_non_stamp_as_itself() -> None:
    assert rows.ago("2026-11-25T10:02:00.000Z", NOW) == "3 min 0 s ago"
    assert rows.ago("yesterday\x1b[2J", NOW) == "yesterday"


def test_the_last_line_of_output_is_the_newest_with_something_in_it_cleaned() -> None:
    assert rows.last_line("first\n\x1b[32mdone\x1b[0m\n\n  \n") == "done"
    assert rows.last_line(None) == ""


def test_show_survives_a_lease_no_runner_wrote_and_says_how_long_a_task_ran() -> None:
    row = {
        "id": "t",
        "status": "failed",
        "startedAt": "2026-11-25T10:00:00.000Z",
        "finishedAt": "2026-11-25T10:02:05.000Z",
        "leaseExpiresAt": 10**40,
        "title": "evil\x1b]52;c;aGk=\x07",
    }
    shown = rows.shown(row, now=NOW.timestamp())
    assert shown["ran for"] == "2 min 5 s"
    assert shown["leaseExpiresAt"].startswith(str(10**40))
    assert shown["title"] == "evil"
    assert list(shown)[:3] == ["id", "status", "title"]


def test_progress_says_what_a_pending_task_waits_for_and_a_running_ones_last_line() -> None:
    waiting = {"status": "pending", "waitingFor": "branch feature/x is being worked on by task T"}
    assert progress_line(waiting, 3) == "pending  3 s  branch feature/x is being worked on by task T"
    running = {"status": "processing", "attempts": 2, "logTail": "a\nworking on it\n"}
    assert progress_line(running, 65) == "processing  1 min 5 s  attempt 2  working on it"


def test_submit_and_the_runner_refuse_by_the_same_rules() -> None:
    """What the runner writes as the task's error is what ``aipm submit`` says of the same field."""
    task = Task(id="t", title="x", branch="main", status="pending", details="d" * 10)
    found = refusal(task, ["main"], 64)
    assert found is not None and (found.field, found.kind) == ("branch", ErrorKind.UNSAFE_BRANCH)
    with pytest.raises(InvalidSubmission) as refused:
        check_submission({"id": "t", "title": "x", "branch": "main", "details": "d"}, ["main"], 64)
    assert (refused.value.field, refused.value.reason) == ("branch", found.message)
    too_big = refusal(task.model_copy(update={"branch": "feature/x"}), ["main"], 5)
    assert too_big is not None and too_big.message == "details is 10 bytes, over the 5-byte limit"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"title": "x", "branch": "feature/x"}, "id"),
        ({"id": "t", "title": "\t ", "branch": "feature/x"}, "title"),
        ({"id": "t", "title": "x", "branch": "feature/x", "prNumber": "forty"}, "prNumber"),
    ],
)
def test_a_submission_names_its_field_by_its_wire_name(row: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidSubmission) as refused:
        check_submission(row, [], 1000)
    assert refused.value.field == field
