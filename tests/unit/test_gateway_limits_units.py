"""Pure parts of meeting API Gateway's limits: splitting by UTF-8 bytes, the runner's move-over
mark, the gateway's limit settings, and the demo token endpoint's answers to bad input."""

from __future__ import annotations

import pytest

from ec2_runner.ws_client import RelayLinkSettings
from local.demo_tokens import demo_token
from local.gateway import GatewayLimits
from shared import frames as fr
from shared import tokens

SECRET = "browser-token-secret-for-tests-0123456789"


@pytest.mark.parametrize("limit", [4, 7, 100, fr.INPUT_DATA_BYTES])
def test_utf8_pieces_rejoin_to_the_text_and_never_pass_the_limit(limit: int) -> None:
    text = ("ascii é 漢字 🙂 " * 3000)[:20_000]
    pieces = fr.utf8_pieces(text, limit)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= limit for p in pieces)


def test_utf8_pieces_refuses_a_limit_no_character_fits_in() -> None:
    with pytest.raises(ValueError, match="at least one character"):
        fr.utf8_pieces("🙂", 3)


def test_runner_moves_before_the_maximum_duration_and_never_in_its_first_half() -> None:
    assert RelayLinkSettings().move_after == 6900.0
    assert RelayLinkSettings(max_connection_seconds=3.0, move_ahead_seconds=300.0).move_after == 1.5


def test_gateway_limits_default_to_aws_and_refuse_nonsense() -> None:
    limits = GatewayLimits()
    assert (limits.idle_timeout, limits.max_connection_seconds) == (600.0, 7200.0)
    assert (limits.max_frame_bytes, limits.max_message_bytes) == (32 * 1024, 128 * 1024)
    with pytest.raises(ValueError):
        GatewayLimits(idle_timeout=0)
    with pytest.raises(ValueError):
        GatewayLimits(max_frame_bytes=200 * 1024)


def test_demo_token_mints_what_verify_accepts() -> None:
    answer = demo_token("branch=feature/demo&ro=1&ttl=60", SECRET)
    assert answer.status == 200
    claims = tokens.verify(answer.body["token"], SECRET, role="browser")
    assert claims.branch == "feature/demo" and claims.ro and claims.exp - claims.iat == 60


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("task=T-1&branch=b", 400),
        ("branch=main", 403),
        ("branch=-x", 400),
        ("task=a b", 400),
        ("branch=b&branch=c", 400),
        ("branch=b&ro=yes", 400),
        ("branch=b&ttl=abc", 400),
        ("branch=b&secret=1", 400),
        ("=&&=", 400),
        ("branch=" + "x" * 5000, 400),
    ],
)
def test_demo_token_refuses_bad_input_with_a_sentence(query: str, status: int) -> None:
    answer = demo_token(query, SECRET)
    assert answer.status == status and set(answer.body) == {"error"}
    assert 0 < len(answer.body["error"]) < 300


def test_demo_token_without_a_secret_says_so() -> None:
    assert demo_token("branch=b", None).status == 503
