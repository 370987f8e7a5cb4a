"""$connect REQUEST authorizer: a browser's signed token, or a runner's (signed with the runner secret,
locally and in AWS alike) -> Allow with its grant."""

from __future__ import annotations

from functools import cache

from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.authorizer import Authorizer
from shared.observability import CONNECTION_ID_PATH, logger, tracer
from shared.ws_config import WsSettings


@cache
def settings() -> WsSettings:
    return WsSettings()


@cache
def authorizer() -> Authorizer:
    """Made on the first event, once per process; its secrets are read again every few minutes."""
    return Authorizer(settings().token_secret_source, settings().runner_secret_source)


def reset() -> None:
    """Forget settings, secrets and clients: the next event reads the environment afresh (tests)."""
    settings.cache_clear()
    authorizer.cache_clear()


settings()  # the environment is validated as the function starts


@logger.inject_lambda_context(correlation_id_path=CONNECTION_ID_PATH)
@tracer.capture_lambda_handler
@event_source(data_class=APIGatewayAuthorizerRequestEvent)
def lambda_handler(event: APIGatewayAuthorizerRequestEvent, context: LambdaContext) -> dict:
    # raises UnauthorizedError("Unauthorized") without a token: API Gateway answers 401
    return authorizer().authorize(event)
