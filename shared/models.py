"""Pydantic models for everything that crosses a border: the task row, the SQS signal, socket frames.

The task row's seed fields (``id, title, details, branch, prNumber, prUrl, status, createdAt,
updatedAt, error``) are a contract with existing backends and UIs: their names, types and values
never change. Fields added by this project are optional so older rows stay valid.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from shared.text import clean_text

# a row's claims count: the claim adds one, so a row at the limit is refused, never claimed
MAX_ATTEMPTS = 1_000_000


_deserializer = TypeDeserializer()
_serializer = TypeSerializer()


def _read_exactly(raw: Any) -> Any:
    """One attribute value as boto3 reads it, except that a Number beyond its 38-digit context
    (DynamoDB stores e.g. ``1E+100``, and a 39-digit value comes back through moto as written) is
    read exactly instead of raising ``decimal.Inexact``/``Rounded``: any row's plain values can be
    shown."""
    try:
        return _deserializer.deserialize(raw)
    except ArithmeticError:
        if not isinstance(raw, dict) or len(raw) != 1:
            raise
        [(tag, value)] = raw.items()
        # the Decimal constructor is exact whatever the context's precision
        if tag == "N":
            return Decimal(value)
        if tag == "NS":
            return {Decimal(v) for v in value}
        if tag == "L":
            return [_read_exactly(v) for v in value]
        if tag == "M":
            return {k: _read_exactly(v) for k, v in value.items()}
        raise


class TaskStatus(StrEnum):
    """The seed's four statuses, spelled exactly as the seed spells them."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETE, TaskStatus.FAILED)


class ErrorKind(StrEnum):
    """Why a task failed, from a closed set (the row's ``errorKind``), so UIs, alarms and metrics
    classify failures without parsing ``error``, which stays the readable sentence. Add-only: a
    value, once written, keeps its spelling and meaning."""

    AGENT_NOT_LOGGED_IN = "agent_not_logged_in"  # the agent asked for a login no one gave
    AGENT_AUTH_FAILED = "agent_auth_failed"  # the agent's credential was refused
    APPROVAL_REQUIRED = "approval_required"  # the agent asked to approve a tool
    AGENT_TIMEOUT = "agent_timeout"  # the agent ran out of its time
    AGENT_EXIT = "agent_exit"  # the agent failed by itself: a non-zero exit, a signal
    AGENT_UNAVAILABLE = "agent_unavailable"  # the agent command could not be started
    NO_CHANGES = "no_changes"  # the agent changed nothing
    UNSAFE_BRANCH = "unsafe_branch"  # the task's branch breaks the branch rules
    INVALID_TASK = "invalid_task"  # the row cannot be a task, or one too large to run
    GIT_FAILED = "git_failed"  # a git step failed (checkout, commit, a push the network broke)
    PUSH_CONFLICT = "push_conflict"  # the branch moved and the work does not rebase onto it
    PUSH_REFUSED = "push_refused"  # the remote declined the push (a hook, a protected ref)
    GAVE_UP = "gave_up"  # the dead-letter path ended a task its attempts could not finish
    CANCELLED = "cancelled"  # someone asked for the task (or the run) to stop
    AGENT_RATE_LIMITED = "agent_rate_limited"  # the model API said 429 (a released task's note)
    AGENT_TURN_LIMIT = "agent_turn_limit"  # the agent used up its turns; its work is kept on the WIP ref
    AGENT_API_ERROR = "agent_api_error"  # the model API failed: unreachable, a broken stream, a 5xx


def utc_now_iso() -> str:
    """Timestamps in the seed's format: ISO 8601, UTC, millisecond precision, ``Z`` suffix."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def from_dynamodb(image: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB-JSON image (``{"id": {"S": ...}}``) as plain Python values; a Number of more
    than 38 digits becomes the exact int it is (``read_row`` refuses such a row as a task)."""
    return {k: _plain(_read_exactly(v)) for k, v in image.items()}


class InvalidRow(BaseModel):
    """A row the code cannot read as a ``Task``: what a listing shows in its place."""

    id: str | None = None
    status: str | None = None
    reason: str
    created_at: str | None = None  # the row's createdAt when it is a string (listings sort by it)


def describe_validation(err: ValidationError) -> str:
    """A pydantic error as one sentence: ``invalid task row: <field>: <problem>; ...``."""
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "row"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid task row: " + "; ".join(parts)


def read_row(item: dict[str, Any]) -> Task | InvalidRow:
    """A DynamoDB-JSON row as a ``Task``, or as an ``InvalidRow`` saying why it cannot be one
    (a field of the wrong type, a number beyond what Python's decimal context reads exactly)."""
    values: dict[str, Any] = {}
    unreadable: list[str] = []
    for key, raw in item.items():
        if key not in _TASK_KEYS:
            continue  # what a backend adds beside the task's own fields is not the task's to read
        try:
            values[key] = _plain(_deserializer.deserialize(raw))
        except (ArithmeticError, TypeError, ValueError):
            unreadable.append(f"{key}: {_unreadable(raw)}")
    ident = item.get("id", {}).get("S") if isinstance(item.get("id"), dict) else None
    status = item.get("status", {}).get("S") if isinstance(item.get("status"), dict) else None
    created = item.get("createdAt", {}).get("S") if isinstance(item.get("createdAt"), dict) else None
    if unreadable:
        reason = "invalid task row: " + "; ".join(unreadable)
        return InvalidRow(id=ident, status=status, reason=reason, created_at=created)
    try:
        return Task.model_validate(values)
    except ValidationError as e:
        return InvalidRow(id=ident, status=status, reason=describe_validation(e), created_at=created)


def _unreadable(raw: Any) -> str:
    """Why an attribute value cannot be read, with (the start of) what it holds."""
    tag, value = next(iter(raw.items()), ("", "")) if isinstance(raw, dict) else ("", raw)
    digits = sum(ch.isdigit() for ch in value) if tag == "N" and isinstance(value, str) else 0
    if digits > 38:
        return f"a number of {digits} digits, more than the 38 this code reads exactly ({_shown(value)})"
    return f"a value this code cannot read ({_shown(str(value))})"


def _shown(value: object) -> str:
    """A value from a row as a reason may quote it: cleaned, and cut short."""
    text = clean_text(str(value))
    return text if len(text) <= 24 else f"{text[:20]}..."


def to_dynamodb(values: dict[str, Any]) -> dict[str, Any]:
    """Plain Python values as DynamoDB-JSON attribute values (floats as Decimal, None dropped)."""
    return {k: _serializer.serialize(_ddb_value(v)) for k, v in values.items() if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return {_plain(v) for v in value}
    return value


def _ddb_value(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, StrEnum):
        return value.value
    return value


class WireModel(BaseModel):
    """A model whose wire names are camelCase (the seed's ``prNumber``, ``createdAt``, ...) while
    Python reads snake_case attributes; either name is accepted on input, dumps use the wire names."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class Task(WireModel):
    """One row of the queue table."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    # seed fields
    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1)
    details: str = ""
    branch: str
    pr_number: int | None = None
    pr_url: str | None = None
    status: TaskStatus
    created_at: str | None = None
    updated_at: str | None = None
    error: str | None = None
    # added fields (add-only)
    # set with ``error`` by every failure; a kind this version does not know (a newer runner's)
    # is kept as the string it is, so the row stays readable
    error_kind: ErrorKind | str | None = Field(default=None, union_mode="left_to_right")
    runner_id: str | None = None
    # a small non-negative count: anything else is refused as an unreadable row, never claimed
    attempts: int = Field(default=0, ge=0, le=MAX_ATTEMPTS)
    lease_expires_at: float | None = None  # epoch seconds
    started_at: str | None = None
    finished_at: str | None = None
    commit_sha: str | None = None
    log_tail: str | None = None
    wip_sha: str | None = None
    wip_ref: str | None = None  # the kiro-wip/... ref that holds wip_sha
    base_sha: str | None = None
    waiting_for: str | None = None  # what a task held up (by its branch) waits for
    agent_session_id: str | None = None  # the agent CLI's own conversation id (Refine resumes it)
    retry_after: float | None = None  # epoch seconds: a rate-limited task is not claimed before
    # when an operator asked the running attempt to stop (``aipm task cancel``): its runner sees it
    # at its next lease renewal, stops the agent, keeps the work on its WIP ref and fails the row
    cancel_requested_at: str | None = None

    @field_validator("pr_number", mode="before")
    @classmethod
    def _pr_number_from_string(cls, v: Any) -> Any:
        # some backends write prNumber as a numeric string; accept it, reject anything else
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        return v

    @field_validator("attempts", mode="before")
    @classmethod
    def _attempts_is_a_small_count(cls, v: Any) -> Any:
        # a row's attempts may come from anyone with table access: 1.5, -1 or 38 nines is refused
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ATTEMPTS:
            return v
        raise PydanticCustomError(
            "attempts_count",
            "must be a whole number from 0 to {limit} (the claims so far), not {shown}",
            {"limit": MAX_ATTEMPTS, "shown": _shown(v)},
        )

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Task:
        """A task from a DynamoDB-JSON item or stream image."""
        return cls.model_validate(from_dynamodb(item))

    def prompt(self) -> str:
        """The instruction handed to the agent: what to build, where it will be reviewed."""
        lines = [f"Task: {self.title}", ""]
        if self.details:
            lines += [self.details, ""]
        lines.append(f"You are working on git branch '{self.branch}'.")
        if self.pr_url or self.pr_number is not None:
            number = f" (#{self.pr_number})" if self.pr_number is not None else ""
            lines.append(f"The changes will be reviewed in pull request {self.pr_url or ''}{number}.")
        lines.append(
            "Make the change in this working directory. Do not commit or push; the runner does that."
        )
        return "\n".join(lines)


_TASK_KEYS = frozenset(Task.model_fields) | {f.alias for f in Task.model_fields.values() if f.alias}


class TaskSignal(WireModel):
    """The SQS message body: a signal only. The row is the truth, so duplicates are harmless."""

    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(min_length=1, max_length=256)
    reason: str = "insert"
    requeues: int = Field(default=0, ge=0)  # times the dead-letter handler signalled it afresh

    def body(self) -> str:
        """The message body, ``{"taskId", "reason"}`` as in DESIGN.md; ``requeues`` once it counts."""
        return self.model_dump_json(exclude={"requeues"} if not self.requeues else None)
