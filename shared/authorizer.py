"""The ``$connect`` REQUEST authorizer: who may open a WebSocket connection, and with what grant.

A browser presents a JWT signed with the token secret for the ``aipm-terminal`` audience, granting
one task or branch (maybe read-only); a runner presents one signed with the runner secret for
``aipm-runner`` (``shared.tokens``). No token at all is a
401 (``UnauthorizedError``); a token that is expired, forged or malformed is a Deny (403). An Allow
carries the grant as context, which API Gateway attaches to every later event of the connection
(``shared.identity``).
"""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponseWebSocket,
    parse_api_gateway_arn,
)

from shared import frames as fr
from shared import tokens
from shared.tokens import SecretSource

logger = logging.getLogger(__name__)


class UnauthorizedError(Exception):
    """No credential at all: API Gateway answers 401 when an authorizer raises ``Unauthorized``."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


class Authorizer:
    """Checks the token of a ``$connect`` against the secrets, read from their sources on each call
    (a source caches an ARN's value a while, so a rotated secret takes effect)."""

    def __init__(self, token_secret: SecretSource, runner_secret: SecretSource) -> None:
        self._token_secret = token_secret
        self._runner_secret = runner_secret

    def authorize(self, event: APIGatewayAuthorizerRequestEvent) -> dict[str, Any]:
        """The authorizer's answer: Allow with the grant as context, or Deny.

        Raises UnauthorizedError when there is no token (401).
        """
        token = (event.query_string_parameters or {}).get("token")
        if not token:
            raise UnauthorizedError()
        claims, failure = _verify(token, self._token_secret.get(), self._runner_secret.get())
        if claims is None:
            logger.info("connect refused: %s token", failure)
            return _answer(event, "anonymous", {"reason": failure}, allow=False)
        return _answer(event, claims.sub, _grant(claims), allow=True)


def _verify(
    token: str, token_secret: str | None, runner_secret: str | None
) -> tuple[tokens.TokenClaims | None, str]:
    """The token's claims if the secret of its role signed it for that role's audience, else None and
    why not."""
    failure = "refused"
    # a runner token is checked first: it is signed with a different secret than browser tokens
    roles: tuple[tuple[str | None, tokens.Role], ...] = ((runner_secret, "runner"), (token_secret, "browser"))
    for secret, role in roles:
        if not secret:
            continue
        try:
            return tokens.verify(token, secret, role=role), ""
        except tokens.TokenExpiredError:
            failure = "expired"
        except tokens.TokenForgedError:
            continue
        except tokens.TokenMalformedError:
            return None, "malformed"
    return None, failure


def _grant(claims: tokens.TokenClaims) -> dict[str, Any]:
    """The context of an Allow: what every later event of the connection says about its sender."""
    if claims.role == "runner":
        return {"role": "runner", "sub": claims.sub}
    context: dict[str, Any] = {
        "role": "browser",
        "sub": claims.sub,
        "sessionId": fr.session_id_for(task_id=claims.task, branch=claims.branch),
        "readOnly": claims.ro,
        "exp": claims.exp,
    }
    if claims.task is not None:
        context["taskId"] = claims.task
    else:
        context["branch"] = claims.branch
    return context


def _answer(
    event: APIGatewayAuthorizerRequestEvent, principal: str, context: dict[str, Any], *, allow: bool
) -> dict[str, Any]:
    """An IAM policy on the route asked for (``$connect``), with the context."""
    response = APIGatewayAuthorizerResponseWebSocket.from_route_arn(
        event.method_arn, principal_id=principal, context=context
    )
    route = parse_api_gateway_arn(event.method_arn, is_websocket_authorizer=True).resource
    if allow:
        response.allow_route(resource=route)
    else:
        response.deny_route(resource=route)
    return response.asdict()
