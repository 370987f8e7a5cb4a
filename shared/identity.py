"""Who is on a WebSocket connection, read from the grant the ``$connect`` authorizer gave it.

API Gateway attaches the authorizer's context to every event of the connection (``$connect``,
``$default``, ``$disconnect``), so a frame needs no read to know its sender, nor whether the token
the connection opened with has expired since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from shared.tokens import CLOCK_SKEW


@dataclass(frozen=True)
class Identity:
    """A connection: a browser (one session, maybe read-only) or a runner."""

    connection_id: str
    role: str
    sub: str
    session_id: str | None = None
    task_id: str | None = None
    branch: str | None = None
    read_only: bool = False
    exp: int | None = None  # a browser's token expiry (epoch seconds), as the authorizer granted it

    def expired(self, now: float) -> bool:
        """Whether the token this connection opened with is past its ``exp``, beyond the clock skew."""
        return self.exp is not None and self.exp + CLOCK_SKEW < now

    @classmethod
    def from_event(cls, event: APIGatewayWebSocketEvent) -> Identity:
        ctx = event.request_context
        auth: dict[str, Any] = ctx.get("authorizer") or {}
        # API Gateway hands context values back as the authorizer gave them, or as strings
        read_only = auth.get("readOnly", False)
        return cls(
            connection_id=ctx.connection_id,
            role=str(auth.get("role") or "unknown"),
            sub=str(auth.get("principalId") or auth.get("sub") or ""),
            session_id=auth.get("sessionId") or None,
            task_id=auth.get("taskId") or None,
            branch=auth.get("branch") or None,
            read_only=read_only is True or str(read_only).lower() == "true",
            exp=_epoch(auth.get("exp")),
        )

    def log_keys(self) -> dict[str, Any]:
        """The keys a log line about this connection carries."""
        return {"connection_id": self.connection_id, "role": self.role, "session_id": self.session_id}


def _epoch(value: Any) -> int | None:
    """A context number as API Gateway hands it back: a number, or its text."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None
