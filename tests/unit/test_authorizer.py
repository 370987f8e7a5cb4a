"""The $connect authorizer (shared.authorizer): events/ws_authorizer_request.json with a token in,
an IAM policy on the route asked for out, the grant as its context."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
)

from shared import frames as fr
from shared import tokens
from shared.authorizer import Authorizer, UnauthorizedError
from shared.tokens import SecretSource
from tests.conftest import EVENTS

pytestmark = pytest.mark.unit

TOKEN_SECRET = "token-secret-for-tests-0123456789"
RUNNER_SECRET = "runner-secret-for-tests-0123456789"
METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abc123defg/prod/$connect"


def _junk_in_signature(token: str) -> str:
    head, sig = token.rsplit(".", 1)
    return f"{head}.{sig[:8]}!={sig[8:]}"


def _alg_none(token: str) -> str:
    """The token's claims under ``{"alg": "none"}`` and no signature."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{header}.{token.split('.')[1]}."


def request(token: str | None) -> APIGatewayAuthorizerRequestEvent:
    event = json.loads((EVENTS / "ws_authorizer_request.json").read_text())
    event["queryStringParameters"] = {"token": token} if token is not None else None
    return APIGatewayAuthorizerRequestEvent(event)


def authorizer() -> Authorizer:
    return Authorizer(SecretSource(TOKEN_SECRET, None), SecretSource(RUNNER_SECRET, None))


def statements(answer: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(s["Effect"], s["Resource"]) for s in answer["policyDocument"]["Statement"]]


def test_a_browser_token_is_allowed_on_the_route_with_its_grant_as_context() -> None:
    token = tokens.mint(TOKEN_SECRET, sub="dev", branch="feature/x", read_only=True, ttl=60)

    answer = authorizer().authorize(request(token))

    assert answer["principalId"] == "dev"
    assert statements(answer) == [("Allow", [METHOD_ARN])]
    assert answer["policyDocument"]["Statement"][0]["Action"] == "execute-api:Invoke"
    assert answer["context"] == {
        "role": "browser",
        "sub": "dev",
        "sessionId": fr.session_id_for(branch="feature/x"),
        "readOnly": True,
        "exp": tokens.verify(token, TOKEN_SECRET).exp,
        "branch": "feature/x",
    }


def test_a_runner_token_is_allowed_as_a_runner() -> None:
    answer = authorizer().authorize(request(tokens.mint_runner_token(RUNNER_SECRET, "runner-7")))

    assert statements(answer) == [("Allow", [METHOD_ARN])]
    assert answer["context"] == {"role": "runner", "sub": "runner-7"}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (tokens.mint(TOKEN_SECRET, sub="u", task="T-1", ttl=1, now=1_000_000), "expired"),
        (tokens.mint("another-secret-0123456789abcdef", sub="u", task="T-1"), "refused"),
        # a browser token signed with the runner secret is no runner token, nor a browser's
        (tokens.mint(RUNNER_SECRET, sub="u", task="T-1"), "refused"),
        # a runner-audience token signed with the token secret is neither
        (tokens.mint_runner_token(TOKEN_SECRET, "runner-x"), "refused"),
        ("garbage.token", "malformed"),
        # alg none: no signature at all
        (_alg_none(tokens.mint(TOKEN_SECRET, sub="u", task="T-1")), "malformed"),
        # a genuine token with junk or an extra '=' in its signature
        (tokens.mint(TOKEN_SECRET, sub="u", task="T-1") + "=", "malformed"),
        (_junk_in_signature(tokens.mint(TOKEN_SECRET, sub="u", task="T-1")), "malformed"),
    ],
)
def test_a_bad_token_is_denied_with_the_reason(token: str, reason: str) -> None:
    answer = authorizer().authorize(request(token))

    assert answer["principalId"] == "anonymous"
    assert statements(answer) == [("Deny", [METHOD_ARN])]
    assert answer["context"] == {"reason": reason}


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_raises_unauthorized_for_a_401(token: str | None) -> None:
    with pytest.raises(UnauthorizedError, match="^Unauthorized$"):
        authorizer().authorize(request(token))


def test_the_secrets_are_read_from_their_sources_on_every_connect() -> None:
    """The authorizer keeps sources, not values: once a source answers the rotated secret, tokens
    signed with it are allowed and tokens signed with the old one are denied."""

    class Rotating(SecretSource):
        def __init__(self) -> None:
            super().__init__(TOKEN_SECRET, None)
            self.current = TOKEN_SECRET

        def get(self) -> str | None:
            return self.current

    source = Rotating()
    auth = Authorizer(source, SecretSource(RUNNER_SECRET, None))
    rotated = "rotated-token-secret-0123456789ab"
    old_token = tokens.mint(TOKEN_SECRET, sub="u", task="T-1")
    new_token = tokens.mint(rotated, sub="u", task="T-1")
    assert statements(auth.authorize(request(old_token)))[0][0] == "Allow"

    source.current = rotated

    assert statements(auth.authorize(request(new_token)))[0][0] == "Allow"
    assert statements(auth.authorize(request(old_token)))[0][0] == "Deny"
