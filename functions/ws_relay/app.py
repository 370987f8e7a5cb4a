"""$default: relay one frame, browser -> its session's runner, runner -> the browsers it names."""

from __future__ import annotations

from functools import cache

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.observability import CONNECTION_ID_PATH, logger, tracer
from shared.relay import Relay, relay_from_settings
from shared.ws_config import WsSettings


@cache
def settings() -> WsSettings:
    return WsSettings()


@cache
def relay() -> Relay:
    """Made on the first event, once per process."""
    return relay_from_settings(settings())


def reset() -> None:
    """Forget settings and clients: the next event reads the environment afresh (tests)."""
    settings.cache_clear()
    relay.cache_clear()


settings()  # the environment is validated as the function starts


@logger.inject_lambda_context(correlation_id_path=CONNECTION_ID_PATH)
@tracer.capture_lambda_handler
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context: LambdaContext) -> dict:
    return relay().on_message(event)
