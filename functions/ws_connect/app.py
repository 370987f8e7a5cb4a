"""$connect: record the authorised connection (browser with its grant, or runner)."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.relay import Identity, relay_from_settings
from shared.ws_config import WsSettings

settings = WsSettings()
logger = Logger(service="aipm-ws-connect")
relay = relay_from_settings(settings)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    ident = Identity.from_event(event)
    logger.append_keys(connection_id=ident.connection_id, role=ident.role, session_id=ident.session_id)
    try:
        relay.connect(ident)
    except PermissionError:
        logger.warning("connection without an authorised role refused")
        return {"statusCode": 403}
    logger.info("connected")
    return {"statusCode": 200}
