"""API Gateway's management API: where ``PostToConnection`` goes, and the client that posts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from botocore.exceptions import ClientError


def management_endpoint(event: APIGatewayWebSocketEvent, override: str | None) -> str:
    """The local stand-in's URL when configured, else ``https://{domainName}/{stage}`` of the event."""
    if override:
        return override.rstrip("/")
    ctx = event.request_context
    return f"https://{ctx.domain_name}/{ctx.stage}"


class Poster:
    """PostToConnection through an ``apigatewaymanagementapi`` client per endpoint, made on first use."""

    def __init__(self, client_factory: Callable[[str], Any]) -> None:
        self._factory = client_factory
        self._clients: dict[str, Any] = {}

    def post(self, endpoint: str, connection_id: str, text: str) -> bool:
        """True if delivered; False if the connection is gone (410). Other errors raise."""
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self._factory(endpoint)
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=text.encode())
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "GoneException":
                return False
            raise
