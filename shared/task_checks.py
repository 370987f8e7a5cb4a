"""The rules a task must pass to run, in one place: the runner refuses a claimed task by them, and
``aipm submit`` refuses a new one by them before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.branches import UnsafeBranchError, check_branch
from shared.models import ErrorKind, Task, TaskStatus


@dataclass(frozen=True)
class Refusal:
    """Why a task cannot run: the row field at fault (its wire name), the readable sentence the
    runner writes as ``error``, and its ``errorKind``."""

    field: str
    message: str
    kind: ErrorKind


def refusal(task: Task, protected: tuple[str, ...] | list[str], max_details_bytes: int) -> Refusal | None:
    """Why ``task`` cannot run at all (details too large, an unsafe branch), or None."""
    size = len(task.details.encode())
    if size > max_details_bytes:
        return Refusal(
            "details",
            f"details is {size} bytes, over the {max_details_bytes}-byte limit",
            ErrorKind.INVALID_TASK,
        )
    try:
        check_branch(task.branch, protected)
    except UnsafeBranchError as e:
        return Refusal("branch", str(e), ErrorKind.UNSAFE_BRANCH)
    return None


class InvalidSubmission(ValueError):
    """A new task the runner would refuse: ``field`` (its wire name) and ``reason`` say why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_submission(
    row: dict[str, Any], protected: tuple[str, ...] | list[str], max_details_bytes: int
) -> Task:
    """``row`` (wire names, no status) as the pending ``Task`` it would be, checked by the task
    model and by the runner's own rules (``refusal``); raises InvalidSubmission naming the first
    field at fault. A title of spaces alone is refused too: no one meant to submit it."""
    try:
        task = Task.model_validate({**row, "status": TaskStatus.PENDING.value})
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "row"
        field = Task.model_fields[name].alias or name if name in Task.model_fields else name
        raise InvalidSubmission(field, _readable(first)) from None
    if not task.title.strip():
        raise InvalidSubmission("title", "must not be empty (a task needs a title the agent can act on)")
    if (found := refusal(task, protected, max_details_bytes)) is not None:
        raise InvalidSubmission(found.field, found.message)
    return task


def _readable(error: Any) -> str:
    """A pydantic error as a reason a person reads (``String should have at least 1 character``
    for an empty id or title becomes ``must not be empty``)."""
    if error["type"] == "string_too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    return str(error["msg"])
