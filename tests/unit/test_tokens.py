"""Browser and runner tokens: signed, short-lived, scoped to one task or branch."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from shared import tokens
from shared.tokens import TokenExpiredError, TokenForgedError, TokenMalformedError

pytestmark = pytest.mark.unit

SECRET = "s3cret-for-tests-only-0123456789"


def test_minted_token_verifies_to_its_claims() -> None:
    """A freshly minted token verifies and carries user, grant and read-only flag."""
    token = tokens.mint(SECRET, sub="alice", task="T-1", read_only=True, ttl=60, now=1000)
    claims = tokens.verify(token, SECRET, now=1010)
    assert (claims.sub, claims.task, claims.branch, claims.read_only, claims.role) == (
        "alice",
        "T-1",
        None,
        True,
        "browser",
    )
    assert claims.exp == 1060


def test_expired_token_is_refused_as_expired() -> None:
    token = tokens.mint(SECRET, sub="alice", branch="feature/x", ttl=60, now=1000)
    with pytest.raises(TokenExpiredError):
        tokens.verify(token, SECRET, now=1000 + 60 + tokens.CLOCK_SKEW + 1)


def test_token_signed_with_another_secret_is_forged() -> None:
    token = tokens.mint("another-secret-0123456789abcdef", sub="mallory", task="T-1")
    with pytest.raises(TokenForgedError):
        tokens.verify(token, SECRET)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_payload_changed_after_signing_is_forged() -> None:
    """Swapping the grant (task A -> task B) breaks the signature."""
    token = tokens.mint(SECRET, sub="alice", task="A")
    header, payload, sig = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["task"] = "B"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{sig}"
    with pytest.raises(TokenForgedError):
        tokens.verify(forged, SECRET)


@pytest.mark.parametrize(
    "bad", ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", None, 42, "x" * 5000, "e30.e30.e30", "e30.e30."]
)
def test_garbage_is_malformed_or_forged(bad: object) -> None:
    with pytest.raises((TokenMalformedError, TokenForgedError)):
        tokens.verify(bad, SECRET)


def test_signed_garbage_payload_is_malformed() -> None:
    """A correctly signed JWT that is not our claims (no grant) is malformed, not accepted."""
    now = int(time.time())
    token = jwt.encode(
        {"sub": "x", "aud": tokens.BROWSER_AUDIENCE, "iat": now, "exp": now + 60}, SECRET, algorithm="HS256"
    )
    with pytest.raises(TokenMalformedError):
        tokens.verify(token, SECRET)


def test_browser_token_needs_exactly_one_grant() -> None:
    with pytest.raises(ValueError):
        tokens.mint(SECRET, sub="a")
    with pytest.raises(ValueError):
        tokens.mint(SECRET, sub="a", task="T", branch="b")


def test_runner_token_has_runner_role() -> None:
    claims = tokens.verify(tokens.mint_runner_token(SECRET, "runner-1"), SECRET)
    assert claims.role == "runner" and claims.sub == "runner-1"


def test_ttl_is_bounded() -> None:
    with pytest.raises(ValueError):
        tokens.mint(SECRET, sub="a", task="T", ttl=0)
    with pytest.raises(ValueError):
        tokens.mint(SECRET, sub="a", task="T", ttl=tokens.MAX_TTL + 1)


def test_short_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        tokens.mint("short", sub="a", task="T")


def test_secret_source_reads_secrets_manager_once() -> None:
    """An ARN is resolved through the client factory on first use only."""
    calls: list[str] = []

    class FakeSecrets:
        def get_secret_value(self, SecretId: str) -> dict:
            calls.append(SecretId)
            return {"SecretString": SECRET}

    source = tokens.SecretSource(None, "arn:aws:secretsmanager:us-east-1:1:secret:x", FakeSecrets)
    assert source.get() == SECRET and source.get() == SECRET
    assert calls == ["arn:aws:secretsmanager:us-east-1:1:secret:x"]
    assert tokens.SecretSource("literal", "arn:ignored", None).get() == "literal"


def test_a_rotated_secret_takes_effect_once_its_max_age_passed() -> None:
    """An ARN's value is cached, not kept: after ``max_age`` seconds it is read again (a rotation
    reaches a warm Lambda or a running runner without a restart); the default is five minutes."""
    values = iter([SECRET, "rotated-secret-0123456789abcdef"])

    class RotatingSecrets:
        def get_secret_value(self, SecretId: str) -> dict:
            return {"SecretString": next(values)}

    source = tokens.SecretSource(
        None, "arn:aws:secretsmanager:us-east-1:1:secret:x", RotatingSecrets, max_age=1
    )
    assert source.get() == SECRET and source.get() == SECRET
    time.sleep(1.1)
    assert source.get() == "rotated-secret-0123456789abcdef"
    assert tokens.SECRET_MAX_AGE == 300


def test_a_binary_secret_is_read_as_text() -> None:
    class BinarySecrets:
        def get_secret_value(self, SecretId: str) -> dict:
            return {"SecretBinary": SECRET.encode()}

    assert (
        tokens.SecretSource(None, "arn:aws:secretsmanager:us-east-1:1:secret:b", BinarySecrets).get()
        == SECRET
    )
