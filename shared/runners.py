"""The fleet's heartbeat records: what each runner writes a few times a lease, and how they are read.

One record per runner in the runners table (template.yaml ``RunnersTable``), all in one partition
(``fleet``) sorted by runner id, so listing the fleet is one Query, never a scan. Each record carries
its own TTL (``expiresAt``): a runner that stopped heartbeating is shown as gone until then, and the
table's TTL sweeps the record away later (DynamoDB deletes expired items lazily, so readers also
skip a record past its ``expiresAt`` themselves).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.models import from_dynamodb

FLEET = "runners"  # the one partition key value
DEFAULT_RUNNERS_TABLE = "aipm-runners"  # the template's default NamePrefix
GONE_AFTER_BEATS = 3  # missed heartbeats before a runner counts as gone


class RunnerState(StrEnum):
    """What a runner says it is doing in its heartbeat."""

    RUNNING = "running"  # taking tasks
    WAITING_FOR_LOGIN = "waiting_for_login"  # its agent is not logged in: it takes no task
    STOPPING = "stopping"  # a warm stop: finishing what it holds, taking nothing new
    STOPPED = "stopped"  # its last record, written as it exited


class Liveness(StrEnum):
    """A reader's view of a record: heard from lately, gone quiet, or said goodbye."""

    LIVE = "live"
    GONE = "gone"  # no heartbeat for GONE_AFTER_BEATS intervals: killed, frozen or cut off
    STOPPED = "stopped"


class RunnerRecord(BaseModel):
    """One runner's heartbeat (wire names are the table's attribute names)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    runner_id: str = Field(alias="runnerId")
    host: str
    pid: int = 0
    version: str
    agent: str  # the adapter's name: kiro, command, demo
    agent_logged_in: bool | None = Field(default=None, alias="agentLoggedIn")  # None: not checked
    agent_login: str = Field(default="", alias="agentLogin")  # a sentence on the login state
    state: RunnerState
    slots_busy: int = Field(alias="slotsBusy")
    slots_total: int = Field(alias="slotsTotal")
    tasks: list[str] = Field(default_factory=list)
    terminal_sessions: int = Field(default=0, alias="terminalSessions")
    started_at: float = Field(alias="startedAt")
    last_seen: float = Field(alias="lastSeen")
    heartbeat_seconds: float = Field(alias="heartbeatSeconds")
    expires_at: int = Field(alias="expiresAt")

    def liveness(self, now: float | None = None) -> Liveness:
        if self.state is RunnerState.STOPPED:
            return Liveness.STOPPED
        quiet = (time.time() if now is None else now) - self.last_seen
        return Liveness.LIVE if quiet <= GONE_AFTER_BEATS * self.heartbeat_seconds else Liveness.GONE

    def item(self) -> dict[str, Any]:
        """The record as a DynamoDB item (low-level attribute values)."""
        data = self.model_dump(by_alias=True, mode="json")
        item: dict[str, Any] = {"fleet": {"S": FLEET}}
        for key, value in data.items():
            if value is None:
                continue
            if isinstance(value, bool):
                item[key] = {"BOOL": value}
            elif isinstance(value, int | float):
                item[key] = {"N": repr(value) if isinstance(value, float) else str(value)}
            elif isinstance(value, list):
                item[key] = {"L": [{"S": str(v)} for v in value]}
            else:
                item[key] = {"S": str(value)}
        return item


class RunnerRegistry:
    """The runners table: a runner puts its record; operators list the fleet."""

    def __init__(self, ddb: Any, table_name: str) -> None:
        self._ddb = ddb
        self.table_name = table_name

    def put(self, record: RunnerRecord) -> None:
        self._ddb.put_item(TableName=self.table_name, Item=record.item())

    def list(self, now: float | None = None) -> list[RunnerRecord]:
        """Every record whose TTL has not passed, by runner id (records that cannot be read are
        skipped: one bad item never hides the fleet)."""
        now = time.time() if now is None else now
        found: list[RunnerRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "fleet = :f",
            "ExpressionAttributeValues": {":f": {"S": FLEET}},
        }
        while True:
            page = self._ddb.query(**kwargs)
            for item in page.get("Items", []):
                try:
                    record = RunnerRecord.model_validate(from_dynamodb(item))
                except ValueError:
                    continue
                if record.expires_at > now:
                    found.append(record)
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
