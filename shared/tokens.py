"""Short-lived signed tokens: what a browser presents at ``$connect`` (and what a runner presents locally).

A token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, "v1." + payload))``; the payload is
compact JSON with ``sub`` (the user), one of ``task`` / ``branch`` (the one session it grants),
``ro`` (read-only watcher), ``role`` and ``exp`` (epoch seconds). The backend mints browser tokens
with ``TOKEN_SECRET``; verification is constant-time and fails by type: expired, forged, malformed.

Runners, in AWS and locally alike, prove they hold the runner secret by presenting a short-lived
runner token (``role=runner``) signed with it, never the secret itself (query strings end up in
logs); the same ``$connect`` authorizer checks it. Locally the secret is ``RUNNER_SECRET``; in AWS the
runner reads it from Secrets Manager (``RUNNER_SECRET_ARN``) with its instance role. No route is
authorised with IAM (SigV4): the instance role only reaches the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_VERSION = b"v1."
MAX_TOKEN_CHARS = 2048
DEFAULT_TTL = 15 * 60
MAX_TTL = 24 * 3600
CLOCK_SKEW = 30


class TokenError(Exception):
    """Base of every token failure; the message never contains the token."""


class TokenMalformedError(TokenError):
    """Not a token at all: wrong shape, bad base64, bad JSON, missing claims."""


class TokenForgedError(TokenError):
    """The signature does not match: another secret, or a payload changed after signing."""


class TokenExpiredError(TokenError):
    """A genuine token past its ``exp``."""


class TokenClaims(BaseModel):
    """What a token grants."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str = Field(min_length=1, max_length=256)
    role: Literal["browser", "runner"] = "browser"
    task: str | None = Field(default=None, min_length=1, max_length=256)
    branch: str | None = Field(default=None, min_length=1, max_length=256)
    ro: bool = False
    exp: int

    @model_validator(mode="after")
    def _grant(self) -> TokenClaims:
        if self.role == "browser" and (self.task is None) == (self.branch is None):
            raise ValueError("a browser token grants exactly one of task or branch")
        return self

    @property
    def read_only(self) -> bool:
        return self.ro


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < 16:
        raise ValueError("token secret must be at least 16 bytes")
    return key


def _sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _VERSION + payload, hashlib.sha256).digest()


def mint(
    secret: str | bytes,
    *,
    sub: str,
    task: str | None = None,
    branch: str | None = None,
    read_only: bool = False,
    ttl: int = DEFAULT_TTL,
    role: Literal["browser", "runner"] = "browser",
    now: float | None = None,
) -> str:
    """A token for ``task`` or ``branch`` (exactly one), valid ``ttl`` seconds."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds")
    claims = TokenClaims(
        sub=sub, role=role, task=task, branch=branch, ro=read_only, exp=int((now or time.time()) + ttl)
    )
    payload = json.dumps(
        claims.model_dump(exclude_none=True, exclude_defaults=False), separators=(",", ":"), sort_keys=True
    ).encode()
    return f"{_b64(payload)}.{_b64(_sign(_key(secret), payload))}"


def mint_runner_token(
    runner_secret: str | bytes, runner_id: str, ttl: int = 300, now: float | None = None
) -> str:
    """What a runner presents at ``$connect``: a runner token signed with the runner secret."""
    return mint(runner_secret, sub=runner_id, role="runner", ttl=ttl, now=now)


def verify(token: object, secret: str | bytes, *, now: float | None = None) -> TokenClaims:
    """The claims of a genuine, unexpired token; raises a TokenError subclass otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenMalformedError("token missing or too long")
    parts = token.split(".")
    if len(parts) != 2 or not all(parts):
        raise TokenMalformedError("token is not payload.signature")
    try:
        payload = _unb64(parts[0])
        signature = _unb64(parts[1])
    except (binascii.Error, ValueError) as e:
        raise TokenMalformedError("token is not base64url") from e
    if not hmac.compare_digest(_sign(_key(secret), payload), signature):
        raise TokenForgedError("token signature does not match")
    try:
        claims = TokenClaims.model_validate(json.loads(payload))
    except (ValueError, ValidationError) as e:
        raise TokenMalformedError("token payload is not valid claims") from e
    if claims.exp + CLOCK_SKEW < (now if now is not None else time.time()):
        raise TokenExpiredError("token expired")
    return claims


SECRET_MAX_AGE = 300  # seconds a secret read from Secrets Manager is used before it is read again


class SecretSource:
    """A secret from configuration: a literal value (the local stack), or a Secrets Manager ARN read
    through Powertools' parameters provider and cached ``max_age`` seconds, so a rotated secret takes
    effect within that time without a restart.

    The one way to build a secret source, for the Lambdas, the runner and the CLI alike: the
    secretsmanager client is made (from ``region`` and ``endpoint_url``) only when an ARN has to be
    read; ``client_factory`` replaces that client where a test needs to.
    """

    def __init__(
        self,
        value: str | None,
        arn: str | None,
        client_factory: Callable[[], Any] | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        max_age: int = SECRET_MAX_AGE,
    ) -> None:
        self._value = value
        self._arn = arn
        self._factory = client_factory or (lambda: _secrets_client(region, endpoint_url))
        self._max_age = max_age
        self._provider: Any = None

    def get(self) -> str | None:
        """The secret: the literal value, else the ARN's value (read again once ``max_age`` passed)."""
        if self._value is not None or not self._arn:
            return self._value
        if self._provider is None:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            self._provider = SecretsProvider(boto3_client=self._factory())
        secret = self._provider.get(self._arn, max_age=self._max_age)
        return secret.decode() if isinstance(secret, bytes) else secret


def _secrets_client(region: str | None, endpoint_url: str | None) -> Any:
    from shared import aws

    return aws.client("secretsmanager", region=region, endpoint_url=endpoint_url)
