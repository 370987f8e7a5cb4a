"""The connections table: which browsers and runners are connected, and which runner holds a session.

Key ``connectionId``, GSI ``sessionId-index``, TTL ``expiresAt``. Three kinds of item share it:

- a browser: ``role=browser``, ``sessionId`` = the one session its token grants, ``readOnly``,
  ``sub`` and ``tokenExp`` (its token's ``exp``);
- a runner: ``role=runner``, ``sessionId=#runners`` (so runners are listed by a query, never a scan),
  ``sessions`` = the sessions it holds;
- a route: ``connectionId=route#<sessionId>``, ``runnerConnectionId`` = the runner holding it.

The rate limiter's counters live in the same table (``shared.ratelimit``), under keys of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.identity import Identity

RUNNERS_KEY = "#runners"
ROUTE_PREFIX = "route#"
SESSION_INDEX = "sessionId-index"


@dataclass(frozen=True)
class StoredConnection:
    """A connection's item as it was in the table."""

    connection_id: str
    role: str
    sessions: tuple[str, ...] = ()  # a runner's: the sessions it held

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> StoredConnection:
        return cls(
            connection_id=item["connectionId"]["S"],
            role=item.get("role", {}).get("S", ""),
            sessions=tuple(item.get("sessions", {}).get("SS", [])),
        )


class ConnectionStore:
    """The connections table, through one injected DynamoDB client."""

    def __init__(
        self, dynamodb: Any, table: str, ttl_seconds: int = 7800, clock: Callable[[], float] = time.time
    ):
        self._ddb = dynamodb
        self.table = table
        self._ttl = ttl_seconds
        self._clock = clock

    def _expires(self) -> dict[str, str]:
        return {"N": str(int(self._clock() + self._ttl))}

    def add_browser(self, ident: Identity) -> None:
        item = {
            "connectionId": {"S": ident.connection_id},
            "role": {"S": "browser"},
            "sessionId": {"S": ident.session_id or ""},
            "readOnly": {"BOOL": ident.read_only},
            "sub": {"S": ident.sub},
            "expiresAt": self._expires(),
        }
        if ident.exp is not None:
            item["tokenExp"] = {"N": str(ident.exp)}  # the grant's end (the relay checks it per frame)
        self._ddb.put_item(TableName=self.table, Item=item)

    def add_runner(self, ident: Identity) -> None:
        item = {
            "connectionId": {"S": ident.connection_id},
            "role": {"S": "runner"},
            "sessionId": {"S": RUNNERS_KEY},
            "sub": {"S": ident.sub},
            "expiresAt": self._expires(),
        }
        self._ddb.put_item(TableName=self.table, Item=item)

    def remove(self, connection_id: str) -> StoredConnection | None:
        """Delete one connection; returns what it was (None if it was already gone)."""
        resp = self._ddb.delete_item(
            TableName=self.table, Key={"connectionId": {"S": connection_id}}, ReturnValues="ALL_OLD"
        )
        old = resp.get("Attributes")
        return StoredConnection.from_item(old) if old else None

    def route(self, session_id: str) -> str | None:
        """The runner connection holding the session, if any (a consistent read)."""
        resp = self._ddb.get_item(
            TableName=self.table, Key={"connectionId": {"S": ROUTE_PREFIX + session_id}}, ConsistentRead=True
        )
        item = resp.get("Item")
        return item["runnerConnectionId"]["S"] if item else None

    def claim_route(self, session_id: str, runner_connection_id: str) -> str:
        """Route the session to this runner unless another already holds it; returns the holder."""
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item=self._route_item(session_id, runner_connection_id),
                ConditionExpression="attribute_not_exists(connectionId)",
            )
            return runner_connection_id
        except ClientError as e:
            if not _conditional(e):
                raise
        holder = self.route(session_id)
        return holder or self.claim_route(session_id, runner_connection_id)

    def set_route(self, session_id: str, runner_connection_id: str) -> None:
        """Route the session to this runner (a runner's hello: it holds the session now)."""
        self._ddb.put_item(TableName=self.table, Item=self._route_item(session_id, runner_connection_id))

    def _route_item(self, session_id: str, runner_connection_id: str) -> dict[str, Any]:
        return {
            "connectionId": {"S": ROUTE_PREFIX + session_id},
            "role": {"S": "route"},
            "sessionId": {"S": session_id},
            "runnerConnectionId": {"S": runner_connection_id},
            "expiresAt": self._expires(),
        }

    def drop_route(self, session_id: str, runner_connection_id: str | None = None) -> bool:
        """Delete the session's route (only if it still points at ``runner_connection_id`` when given);
        False when it pointed elsewhere."""
        kwargs: dict[str, Any] = {}
        if runner_connection_id:
            kwargs = {
                "ConditionExpression": "runnerConnectionId = :r",
                "ExpressionAttributeValues": {":r": {"S": runner_connection_id}},
            }
        try:
            self._ddb.delete_item(
                TableName=self.table, Key={"connectionId": {"S": ROUTE_PREFIX + session_id}}, **kwargs
            )
        except ClientError as e:
            if not _conditional(e):
                raise
            return False
        return True

    def runners(self) -> list[str]:
        """Every runner connection (a query on the session index, never a scan)."""
        return self._query_ids(RUNNERS_KEY)

    def browsers(self, session_id: str) -> list[str]:
        """The browser connections on a session."""
        return [c for c in self._query_ids(session_id) if not c.startswith(ROUTE_PREFIX)]

    def _query_ids(self, key: str) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": SESSION_INDEX,
            "KeyConditionExpression": "sessionId = :s",
            "ExpressionAttributeValues": {":s": {"S": key}},
        }
        while True:
            resp = self._ddb.query(**kwargs)
            ids += [item["connectionId"]["S"] for item in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return ids
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def runner_holds(self, runner_connection_id: str, session_ids: list[str], add: bool = True) -> None:
        """Record (or, with ``add=False``, forget) sessions on the runner's item, if it still exists."""
        if not session_ids:
            return
        op = "ADD" if add else "DELETE"
        try:
            self._ddb.update_item(
                TableName=self.table,
                Key={"connectionId": {"S": runner_connection_id}},
                UpdateExpression=f"{op} sessions :s",
                ConditionExpression="attribute_exists(connectionId)",
                ExpressionAttributeValues={":s": {"SS": list(session_ids)}},
            )
        except ClientError as e:
            if not _conditional(e):
                raise


def _conditional(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
