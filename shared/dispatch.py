"""What the dispatch function decides: which stream records become a signal to the runners."""

from __future__ import annotations

import logging
from typing import Any

from shared.models import TaskSignal, TaskStatus

logger = logging.getLogger(__name__)


class MalformedRecordError(ValueError):
    """A stream record that cannot be a task signal (no keys, no image, no id)."""


def signal_for(
    event_name: str, new_image: dict[str, Any] | None, old_image: dict[str, Any] | None
) -> TaskSignal | None:
    """The signal a stream record calls for, or None.

    INSERT with status pending signals; so does MODIFY into pending from anything else (the seed's
    "reset to pending" re-runs a task). Everything else, runners' own transitions included, is quiet.
    """
    if event_name not in ("INSERT", "MODIFY", "REMOVE"):
        raise MalformedRecordError(f"unknown eventName {event_name!r}")
    if event_name == "REMOVE":
        return None
    if not isinstance(new_image, dict):
        raise MalformedRecordError("record has no NewImage (stream view type must be NEW_AND_OLD_IMAGES)")
    task_id = new_image.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise MalformedRecordError("NewImage has no string id")
    if new_image.get("status") != TaskStatus.PENDING.value:
        return None
    if event_name == "INSERT":
        return TaskSignal(task_id=task_id, reason="insert")
    old_status = (old_image or {}).get("status")
    if old_status == TaskStatus.PENDING.value:
        return None
    return TaskSignal(task_id=task_id, reason=f"reset from {old_status or 'nothing'}")


def needs_created_at(new_image: dict[str, Any] | None) -> bool:
    """Whether a pending row's image lacks the ``createdAt`` the status index is keyed on."""
    return isinstance(new_image, dict) and not new_image.get("createdAt")


class Dispatcher:
    """Sends signals to the task queue."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def send(self, signal: TaskSignal) -> str:
        resp = self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=signal.body())
        return resp["MessageId"]
