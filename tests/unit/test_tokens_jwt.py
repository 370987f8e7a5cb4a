"""Tokens are standard JWTs: what another implementation mints is accepted, and only HS256 with our
key, our audience and the canonical encoding is."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt as pyjwt
import pytest
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import OctKey, RSAKey

from shared import tokens
from shared.tokens import TokenExpiredError, TokenForgedError, TokenMalformedError
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

SECRET = "s3cret-for-tests-only-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "alice", "aud": "aipm-terminal", "task": "T-1", "ro": False, "iat": now, "exp": now + 60}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _joserfc(claims: dict[str, Any], alg: str = "HS256", key: Any = None) -> str:
    return joserfc_jwt.encode({"alg": alg}, claims, key or OctKey.import_key(SECRET))


def test_a_browser_token_is_a_standard_jwt_another_implementation_reads() -> None:
    """joserfc (not PyJWT) verifies our token with the same secret and reads the documented claims."""
    token = tokens.mint(SECRET, sub="alice", branch="feature/x", read_only=True, ttl=60, now=1000)
    decoded = joserfc_jwt.decode(token, OctKey.import_key(SECRET), algorithms=["HS256"])
    assert decoded.header == {"alg": "HS256", "typ": "JWT"}
    assert decoded.claims == {
        "sub": "alice",
        "aud": "aipm-terminal",
        "branch": "feature/x",
        "ro": True,
        "iat": 1000,
        "exp": 1060,
    }


def test_a_runner_token_has_the_runner_audience_and_no_grant() -> None:
    token = tokens.mint_runner_token(SECRET, "runner-1", ttl=300, now=1000)
    claims = joserfc_jwt.decode(token, OctKey.import_key(SECRET)).claims
    assert claims == {"sub": "runner-1", "aud": "aipm-runner", "iat": 1000, "exp": 1300}


def test_a_token_minted_by_another_implementation_is_accepted() -> None:
    """What a backend mints with a stock library (here joserfc, and PyJWT as the README shows)."""
    for token in (
        _joserfc(_claims(task=None, branch="feature/y", ro=True)),
        pyjwt.encode(_claims(), SECRET, algorithm="HS256"),
    ):
        claims = tokens.verify(token, SECRET, role="browser")
        assert claims.sub == "alice" and claims.role == "browser"
        assert (claims.task, claims.branch) in (("T-1", None), (None, "feature/y"))


def test_alg_none_is_refused() -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.c2ln"):
        with pytest.raises((TokenForgedError, TokenMalformedError)):
            tokens.verify(token, SECRET)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_another_hmac_algorithm_with_the_right_key_is_refused(alg: str) -> None:
    with pytest.raises(TokenForgedError):
        tokens.verify(pyjwt.encode(_claims(), SECRET, algorithm=alg), SECRET)


def test_an_rs256_token_is_refused() -> None:
    """Signed with a private key of the minter's own: a public-key algorithm is never accepted."""
    rsa = RSAKey.generate_key(2048)
    with pytest.raises(TokenForgedError):
        tokens.verify(_joserfc(_claims(), alg="RS256", key=rsa), SECRET)


def test_another_key_is_refused() -> None:
    other = OctKey.import_key("another-secret-0123456789abcdef0")
    with pytest.raises(TokenForgedError):
        tokens.verify(_joserfc(_claims(), key=other), SECRET)


def _spellings_of_the_signature(token: str) -> list[str]:
    """The genuine token with its signature spelled otherwise: junk characters, '=' inside or at the
    end, whitespace, the standard (not url-safe) alphabet, a spare low bit set in the last character."""
    head, payload, sig = token.rsplit(".", 2)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(sig[-1]) ^ 1]  # 43 characters carry 2 spare bits
    assert base64.urlsafe_b64decode(sig + "=") == base64.urlsafe_b64decode(sig[:-1] + spare + "=")
    variants = [
        sig[:10] + "!" + sig[10:],
        sig[:10] + "*$" + sig[10:],
        sig[:10] + "=" + sig[10:],
        sig + "=",
        sig + "==",
        sig[:10] + " " + sig[10:],
        sig[:10] + "\n" + sig[10:],
        sig[:-1] + spare,
        sig.replace("-", "+").replace("_", "/") if ("-" in sig or "_" in sig) else sig + "+",
    ]
    return [f"{head}.{payload}.{v}" for v in variants]


def test_a_genuine_token_with_junk_or_padding_in_its_signature_is_refused() -> None:
    token = tokens.mint(SECRET, sub="alice", task="T-1")
    assert tokens.verify(token, SECRET).sub == "alice"
    for variant in _spellings_of_the_signature(token):
        with pytest.raises(TokenMalformedError):
            tokens.verify(variant, SECRET)


def test_padding_in_header_or_payload_is_refused() -> None:
    head, payload, sig = tokens.mint(SECRET, sub="alice", task="T-1").split(".")
    for variant in (f"{head}=.{payload}.{sig}", f"{head}.{payload}=.{sig}", f"{head}.{payload}!.{sig}"):
        with pytest.raises(TokenMalformedError):
            tokens.verify(variant, SECRET)


def test_a_browser_token_is_not_a_runner_token_nor_the_reverse() -> None:
    """The audience tells them apart even under one secret."""
    browser = tokens.mint(SECRET, sub="alice", task="T-1")
    runner = tokens.mint_runner_token(SECRET, "runner-1")
    with pytest.raises(TokenForgedError):
        tokens.verify(browser, SECRET, role="runner")
    with pytest.raises(TokenForgedError):
        tokens.verify(runner, SECRET, role="browser")
    assert tokens.verify(runner, SECRET, role="runner").role == "runner"
    with pytest.raises(TokenForgedError):
        tokens.verify(pyjwt.encode(_claims(aud="someone-else"), SECRET, algorithm="HS256"), SECRET)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(_claims(iat=None), id="no iat"),
        pytest.param(_claims(exp=None), id="no exp"),
        pytest.param(_claims(aud=None), id="no aud"),
        pytest.param(_claims(sub=None), id="no sub"),
        pytest.param(_claims(aud=["aipm-terminal", "aipm-runner"]), id="two audiences"),
        pytest.param(_claims(ro="false"), id="ro not a boolean"),
        pytest.param(_claims(branch="b"), id="task and branch"),
        pytest.param(_claims(exp=int(time.time()) + tokens.MAX_TTL + 60), id="lives over MAX_TTL"),
        pytest.param(
            _claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 3660), id="issued in the future"
        ),
    ],
)
def test_claims_a_foreign_minter_got_wrong_are_malformed(claims: dict[str, Any]) -> None:
    """A genuine signature over claims that break our rules (another backend's mistake) is refused."""
    with pytest.raises(TokenMalformedError):
        tokens.verify(pyjwt.encode(claims, SECRET, algorithm="HS256"), SECRET)


def test_expiry_allows_the_clock_skew_and_no_more() -> None:
    token = _joserfc(_claims(iat=1000, exp=1060))
    assert tokens.verify(token, SECRET, now=1060 + tokens.CLOCK_SKEW).exp == 1060
    with pytest.raises(TokenExpiredError):
        tokens.verify(token, SECRET, now=1060 + tokens.CLOCK_SKEW + 1)


def test_an_oversized_token_is_malformed_before_any_parsing() -> None:
    token = pyjwt.encode(_claims(sub="x" * tokens.MAX_TOKEN_CHARS), SECRET, algorithm="HS256")
    with pytest.raises(TokenMalformedError, match="too long"):
        tokens.verify(token, SECRET)


def _readme_block(after: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{lang}\n", text.index(after)) + len(f"```{lang}\n")
    return text[start : text.index("```", start)]


def test_the_readmes_python_snippet_mints_a_token_the_authorizer_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKEN_SECRET", SECRET)
    scope: dict[str, Any] = {}
    exec(_readme_block("Python (`pip install PyJWT`)", "python"), scope)
    claims = tokens.verify(scope["token"], SECRET, role="browser")
    assert (claims.sub, claims.branch, claims.read_only) == ("alice", "feature/login", False)
