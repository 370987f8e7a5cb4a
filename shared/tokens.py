"""Short-lived signed tokens: what a browser presents at ``$connect``, and what a runner presents.

Both are standard JWTs (RFC 7519), HS256 only, minted and verified with PyJWT, so any backend mints a
browser token with a stock JWT library (the README shows Node's ``jsonwebtoken`` and Python's PyJWT).
Claims: ``sub`` (the user, or the runner id), ``aud`` (``aipm-terminal`` for a browser token,
``aipm-runner`` for a runner token), ``iat`` and ``exp`` (epoch seconds, at most ``MAX_TTL`` apart),
and on a browser token exactly one of ``task`` / ``branch`` (the one session it grants) and ``ro``
(read-only watcher). The backend signs browser tokens with ``TOKEN_SECRET``.

Verification fails by type: expired (past ``exp`` by more than ``CLOCK_SKEW``), forged (another key,
another algorithm, ``alg: none``, another audience) or malformed (not three canonical base64url
parts, over ``MAX_TOKEN_CHARS``, claims missing or of the wrong type, a lifetime over ``MAX_TTL``,
issued in the future). Only the canonical encoding is valid: padding, junk characters or spare bits in
any part are refused, so one token has exactly one spelling.

Runners, in AWS and locally alike, prove they hold the runner secret by presenting a short-lived
runner token signed with it, never the secret itself (query strings end up in logs); the same
``$connect`` authorizer checks it. Locally the secret is ``RUNNER_SECRET``; in AWS the runner reads it
from Secrets Manager (``RUNNER_SECRET_ARN``) with its instance role. No route is authorised with IAM
(SigV4): the instance role only reaches the secret.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

MAX_TOKEN_CHARS = 2048
DEFAULT_TTL = 15 * 60
MAX_TTL = 24 * 3600
CLOCK_SKEW = 30
ALGORITHM = "HS256"
BROWSER_AUDIENCE = "aipm-terminal"
RUNNER_AUDIENCE = "aipm-runner"
MIN_SECRET_BYTES = 16

Role = Literal["browser", "runner"]
AUDIENCES: dict[Role, str] = {"browser": BROWSER_AUDIENCE, "runner": RUNNER_AUDIENCE}
_ROLES: dict[str, Role] = {BROWSER_AUDIENCE: "browser", RUNNER_AUDIENCE: "runner"}
# three unpadded base64url parts and nothing else: no '=', no junk PyJWT's decoder would skip
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# the key's length is checked here (MIN_SECRET_BYTES; generated secrets are 64 characters); newer
# PyJWT also warns below 32 bytes, which would repeat on every token
_SHORT_KEY_WARNING = getattr(getattr(jwt, "warnings", None), "InsecureKeyLengthWarning", None)
if _SHORT_KEY_WARNING is not None:
    warnings.filterwarnings("ignore", category=_SHORT_KEY_WARNING)


class TokenError(Exception):
    """Base of every token failure; the message never contains the token."""


class TokenMalformedError(TokenError):
    """Not a token at all: wrong shape, not canonical base64url, bad JSON, missing or bad claims."""


class TokenForgedError(TokenError):
    """Not signed by this secret with HS256: another key, another algorithm, ``alg: none``, a payload
    changed after signing, or a genuine token for another audience."""


class TokenExpiredError(TokenError):
    """A genuine token past its ``exp``."""


class TokenClaims(BaseModel):
    """What a token grants (``role`` follows from its audience)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str = Field(min_length=1, max_length=256)
    role: Role = "browser"
    task: str | None = Field(default=None, min_length=1, max_length=256)
    branch: str | None = Field(default=None, min_length=1, max_length=256)
    ro: StrictBool = False
    iat: int
    exp: int

    @model_validator(mode="after")
    def _grant(self) -> TokenClaims:
        if self.role == "browser" and (self.task is None) == (self.branch is None):
            raise ValueError("a browser token grants exactly one of task or branch")
        if self.exp - self.iat > MAX_TTL or self.exp < self.iat:
            raise ValueError(f"a token lives between 0 and {MAX_TTL} seconds")
        return self

    @property
    def read_only(self) -> bool:
        return self.ro


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"token secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def mint(
    secret: str | bytes,
    *,
    sub: str,
    task: str | None = None,
    branch: str | None = None,
    read_only: bool = False,
    ttl: int = DEFAULT_TTL,
    role: Role = "browser",
    now: float | None = None,
) -> str:
    """A JWT for ``task`` or ``branch`` (exactly one), valid ``ttl`` seconds."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds")
    iat = int(now if now is not None else time.time())
    claims = TokenClaims(sub=sub, role=role, task=task, branch=branch, ro=read_only, iat=iat, exp=iat + ttl)
    payload: dict[str, Any] = {
        "sub": claims.sub,
        "aud": AUDIENCES[role],
        "iat": claims.iat,
        "exp": claims.exp,
    }
    if role == "browser":
        payload["ro"] = claims.ro
        payload.update({"task": task} if task is not None else {"branch": branch})
    return jwt.encode(payload, _key(secret), algorithm=ALGORITHM)


def mint_runner_token(
    runner_secret: str | bytes, runner_id: str, ttl: int = 300, now: float | None = None
) -> str:
    """What a runner presents at ``$connect``: a runner token signed with the runner secret."""
    return mint(runner_secret, sub=runner_id, role="runner", ttl=ttl, now=now)


def verify(
    token: object, secret: str | bytes, *, role: Role | None = None, now: float | None = None
) -> TokenClaims:
    """The claims of a genuine, unexpired token (for ``role``'s audience, or either when None);
    raises a TokenError subclass otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenMalformedError("token missing or too long")
    if not _COMPACT.fullmatch(token) or not all(_canonical(part) for part in token.split(".")):
        raise TokenMalformedError("token is not a JWT of three canonical base64url parts")
    audiences = [AUDIENCES[role]] if role else list(AUDIENCES.values())
    try:
        payload = jwt.decode(
            token,
            _key(secret),
            algorithms=[ALGORITHM],
            audience=audiences,
            # time is checked below against ``now``, with CLOCK_SKEW
            options={
                "require": ["sub", "aud", "iat", "exp"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError) as e:
        raise TokenForgedError("token is not signed with this secret (HS256)") from e
    except jwt.InvalidAudienceError as e:
        raise TokenForgedError(f"token is not for the audience {' or '.join(audiences)}") from e
    except jwt.InvalidTokenError as e:
        raise TokenMalformedError(f"token is not a valid JWT: {type(e).__name__}") from e
    aud = payload.get("aud")
    if not isinstance(aud, str):
        raise TokenMalformedError("token audience must be one string")
    try:
        claims = TokenClaims.model_validate({**payload, "role": _ROLES[aud]})
    except (ValueError, ValidationError) as e:
        raise TokenMalformedError("token payload is not valid claims") from e
    at = now if now is not None else time.time()
    if claims.exp + CLOCK_SKEW < at:
        raise TokenExpiredError("token expired")
    if claims.iat - CLOCK_SKEW > at:
        raise TokenMalformedError("token is issued in the future")
    return claims


def _canonical(part: str) -> bool:
    """Whether ``part`` is the one unpadded base64url spelling of its bytes (no spare bits set)."""
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == part


SECRET_MAX_AGE = 300  # seconds a secret read from Secrets Manager is used before it is read again


class SecretSource:
    """A secret from configuration: a literal value (the local stack), or a Secrets Manager ARN read
    through Powertools' parameters provider and cached ``max_age`` seconds, so a rotated secret takes
    effect within that time without a restart.

    The one way to build a secret source, for the Lambdas, the runner and the CLI alike: the
    secretsmanager client is made (from ``region``, ``endpoint_url`` and ``keys``, an
    ``aws.Keys``) only when an ARN has to be read; ``client_factory`` replaces that client where a
    caller needs another (a fail-fast one, a test's).
    """

    def __init__(
        self,
        value: str | None,
        arn: str | None,
        client_factory: Callable[[], Any] | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        keys: Any = None,
        max_age: int = SECRET_MAX_AGE,
    ) -> None:
        self._value = value
        self._arn = arn
        self._factory = client_factory or (lambda: _secrets_client(region, endpoint_url, keys))
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


def _secrets_client(region: str | None, endpoint_url: str | None, keys: Any = None) -> Any:
    from shared import aws

    return aws.client("secretsmanager", region=region, endpoint_url=endpoint_url, keys=keys)
