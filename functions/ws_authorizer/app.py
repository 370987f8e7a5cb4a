"""$connect REQUEST authorizer: a browser's signed token, or a runner's (signed with the runner secret,
locally and in AWS alike) -> Allow with its grant."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.relay import authorize
from shared.ws_config import WsSettings

settings = WsSettings()
logger = Logger(service="aipm-ws-authorizer")


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # raises UnauthorizedError("Unauthorized") without a token: API Gateway answers 401
    return authorize(event, settings.token_secret_source.get(), settings.runner_secret_source.get())
