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

_deserializer = TypeDeserializer()
_serializer = TypeSerializer()


class TaskStatus(StrEnum):
    """The seed's four statuses, spelled exactly as the seed spells them."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.COMPLETE, TaskStatus.FAILED)


def utc_now_iso() -> str:
    """Timestamps in the seed's format: ISO 8601, UTC, millisecond precision, ``Z`` suffix."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def from_dynamodb(image: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB-JSON image (``{"id": {"S": ...}}``) as plain Python values."""
    return {k: _plain(_deserializer.deserialize(v)) for k, v in image.items()}


class InvalidRow(BaseModel):
    """A row the code cannot read as a ``Task``: what a listing shows in its place."""

    id: str | None = None
    status: str | None = None
    reason: str


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
        try:
            values[key] = _plain(_deserializer.deserialize(raw))
        except (ArithmeticError, TypeError, ValueError):
            shown = str(next(iter(raw.values()), ""))[:40] if isinstance(raw, dict) and raw else ""
            unreadable.append(f"{key}: a value this code cannot read ({shown})")
    ident = item.get("id", {}).get("S") if isinstance(item.get("id"), dict) else None
    status = item.get("status", {}).get("S") if isinstance(item.get("status"), dict) else None
    if unreadable:
        return InvalidRow(id=ident, status=status, reason="invalid task row: " + "; ".join(unreadable))
    try:
        return Task.model_validate(values)
    except ValidationError as e:
        return InvalidRow(id=ident, status=status, reason=describe_validation(e))


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
    runner_id: str | None = None
    # a small non-negative count: anything else is refused as an unreadable row, never claimed
    attempts: int = Field(default=0, ge=0, le=1_000_000)
    lease_expires_at: float | None = None  # epoch seconds
    started_at: str | None = None
    finished_at: str | None = None
    commit_sha: str | None = None
    log_tail: str | None = None
    wip_sha: str | None = None
    wip_ref: str | None = None  # the kiro-wip/... ref that holds wip_sha
    base_sha: str | None = None
    waiting_for: str | None = None  # what a task held up (by its branch) waits for

    @field_validator("pr_number", mode="before")
    @classmethod
    def _pr_number_from_string(cls, v: Any) -> Any:
        # some backends write prNumber as a numeric string; accept it, reject anything else
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        return v

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


class TaskSignal(WireModel):
    """The SQS message body: a signal only. The row is the truth, so duplicates are harmless."""

    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(min_length=1, max_length=256)
    reason: str = "insert"
    requeues: int = Field(default=0, ge=0)  # times the dead-letter handler signalled it afresh

    def body(self) -> str:
        """The message body, ``{"taskId", "reason"}`` as in DESIGN.md; ``requeues`` once it counts."""
        return self.model_dump_json(exclude={"requeues"} if not self.requeues else None)
