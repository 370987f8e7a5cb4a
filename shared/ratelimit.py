"""Fixed-window rate limits per connection, session or user, exact across any number of relay instances.

One atomic counter per scope, kind and window: an ``ADD`` on an item of its own in the connections
table (key ``rate#<scope>#[<kind>#]<window number>``, no ``sessionId``, so the session index never
sees it), expiring by TTL. The scope is a connection id, or ``session:<id>`` / ``user:<sub>``. Each
count costs one write and no read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

RATE_PREFIX = "rate#"


class RateLimiter:
    """Counts frames per scope in fixed windows, through one injected DynamoDB client."""

    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float] = time.time) -> None:
        self._ddb = dynamodb
        self.table = table
        self._clock = clock

    def take(self, scope: str, limit: int, *, kind: str = "", window: float = 1.0) -> bool:
        """Count one frame of ``kind`` for ``scope`` (a connection id, ``session:<id>``, ``user:<sub>``)
        in the current ``window``-second window; False past ``limit``."""
        now = self._clock()
        of_kind = f"{kind}#" if kind else ""
        resp = self._ddb.update_item(
            TableName=self.table,
            Key={"connectionId": {"S": f"{RATE_PREFIX}{scope}#{of_kind}{int(now // window)}"}},
            UpdateExpression="ADD rc :one SET expiresAt = :exp",
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":exp": {"N": str(int(now + max(60.0, 2 * window)))},
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(resp["Attributes"]["rc"]["N"]) <= limit
