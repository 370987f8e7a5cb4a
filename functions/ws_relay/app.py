"""$default: relay one frame, browser -> its session's runner, runner -> the browsers it names."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.relay import Identity, management_endpoint, relay_from_settings
from shared.ws_config import WsSettings

settings = WsSettings()
logger = Logger(service="aipm-ws-relay")
relay = relay_from_settings(settings)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    ident = Identity.from_event(event)
    logger.append_keys(connection_id=ident.connection_id, role=ident.role)
    try:
        relay.message(ident, event.get("body"), management_endpoint(event, settings.management_endpoint))
    except PermissionError:
        logger.warning("frame from a connection without an authorised role")
        return {"statusCode": 403}
    return {"statusCode": 200}
