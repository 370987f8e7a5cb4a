"""The local stack's ``/task-status`` (the demo page's watch asks it about a task's row): the row's
word only, and a sentence for bad input or an unknown task."""

from __future__ import annotations

from typing import Any

import pytest

from local.demo_task_status import task_status

ROWS: dict[str, dict[str, Any]] = {
    "T-1": {
        "id": "T-1",
        "status": "complete",
        "commitSha": "9f1c" * 10,
        "details": "the backend's text, never shown here",
    },
    "T-2": {"id": "T-2", "status": "failed", "error": "the agent exited 1", "errorKind": "agent_exit"},
}


def read(task_id: str) -> dict[str, Any] | None:
    return ROWS.get(task_id)


def test_the_answer_is_the_rows_status_commit_and_error_only() -> None:
    assert task_status("task=T-1", read).body == {"status": "complete", "commitSha": "9f1c" * 10}
    failed = task_status("task=T-2", read)
    assert (failed.status, failed.body["errorKind"], failed.body["error"]) == (
        200,
        "agent_exit",
        "the agent exited 1",
    )


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("", 400, "give task=ID"),
        ("task=T-1&task=T-2", 400, "give task=ID"),
        ("task=T-1&ro=1", 400, "give task=ID"),
        ("task=-x", 400, "not a task id"),
        ("task=" + "x" * 300, 400, "over 256 characters"),
        ("task=%zz&&=", 400, "not a well-formed"),
        ("task=nope", 404, "no task 'nope'"),
    ],
)
def test_bad_input_and_unknown_tasks_get_a_sentence(query: str, status: int, says: str) -> None:
    answer = task_status(query, read)
    assert answer.status == status and says in answer.body["error"]


def test_a_table_that_cannot_be_read_is_said_briefly() -> None:
    def broken(task_id: str) -> dict[str, Any] | None:
        raise ConnectionError("endpoint down")

    answer = task_status("task=T-1", broken)
    assert answer.status == 503 and answer.body == {
        "error": "the task table could not be read (ConnectionError)"
    }
