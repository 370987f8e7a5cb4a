"""A dispatcher that keeps the signals it is asked to send."""

from __future__ import annotations

from shared.models import TaskSignal


class RecordingDispatcher:
    """``send`` as ``shared.dispatch.Dispatcher`` has it; ``sent`` holds the signals in order."""

    def __init__(self) -> None:
        self.sent: list[TaskSignal] = []

    def send(self, signal: TaskSignal) -> str:
        self.sent.append(signal)
        return f"message-{len(self.sent)}"
