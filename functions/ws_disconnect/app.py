"""$disconnect: forget the connection; a runner's browsers hear that it went, a browser's runner is told."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.relay import Identity, management_endpoint, relay_from_settings
from shared.ws_config import WsSettings

settings = WsSettings()
logger = Logger(service="aipm-ws-disconnect")
relay = relay_from_settings(settings)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    ident = Identity.from_event(event)
    logger.append_keys(connection_id=ident.connection_id, role=ident.role, session_id=ident.session_id)
    relay.disconnect(ident, management_endpoint(event, settings.management_endpoint))
    logger.info("disconnected")
    return {"statusCode": 200}
