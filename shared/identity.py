"""Who is on a WebSocket connection, read from the grant the ``$connect`` authorizer gave it.

API Gateway attaches the authorizer's context to every event of the connection (``$connect``,
``$default``, ``$disconnect``), so a frame needs no read to know its sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent


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
        )

    def log_keys(self) -> dict[str, Any]:
        """The keys a log line about this connection carries."""
        return {"connection_id": self.connection_id, "role": self.role, "session_id": self.session_id}
