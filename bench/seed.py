"""The seed's poller, re-implemented faithfully for the baseline rows.

The seed found work by scanning the whole queue table every 5 seconds for ``status = pending``
and claimed each row it found with an update-item to ``processing``; then it typed the prompt
into its one Kiro session and waited a fixed 30 seconds. The 30 s wait is modelled, not slept
(see ``SEED_FIXED_WAIT``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from shared.models import utc_now_iso

SEED_SCAN_SECONDS = 5.0
SEED_FIXED_WAIT = 30.0


def create_seed_table(ddb: Any, name: str) -> None:
    """The seed's table: key ``id`` and nothing else (no stream, no index)."""
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


class SeedPoller:
    """Scan every ``interval`` seconds for pending rows; claim each one found with update-item."""

    def __init__(self, ddb: Any, table: str, interval: float = SEED_SCAN_SECONDS) -> None:
        self.ddb = ddb
        self.table = table
        self.interval = interval
        self.claimed: dict[str, float] = {}  # task id -> wall time of the claim
        self.scans = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="seed-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _pending(self) -> list[dict]:
        items: list[dict] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "#s = :pending",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":pending": {"S": "pending"}},
        }
        while True:
            resp = self.ddb.scan(**kwargs)
            self.scans += 1
            items += resp.get("Items", [])
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for item in self._pending():
                task_id = item["id"]["S"]
                stamp = utc_now_iso()
                self.ddb.update_item(
                    TableName=self.table,
                    Key={"id": {"S": task_id}},
                    UpdateExpression="SET #s = :processing, startedAt = :t, updatedAt = :t",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":processing": {"S": "processing"}, ":t": {"S": stamp}},
                )
                self.claimed[task_id] = time.time()
            self._stop.wait(self.interval)
