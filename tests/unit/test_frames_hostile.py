"""decode() against hostile input: deep nesting, huge keys and odd bytes end in a short
MalformedFrameError, never a RecursionError or a message that echoes the input."""

from __future__ import annotations

import json

import pytest

from shared import frames as fr

pytestmark = pytest.mark.unit


def nested(depth: int, inside: str = "1") -> str:
    return '{"action":"input","sessionId":"s","data":"x","k":' + "[" * depth + inside + "]" * depth + "}"


@pytest.mark.parametrize("depth", [fr.MAX_DEPTH, 1000, 60_000])
def test_nesting_past_the_limit_is_malformed_before_parsing(depth: int) -> None:
    with pytest.raises(fr.MalformedFrameError, match="deeper than"):
        fr.decode(nested(depth))


def test_nesting_within_the_limit_reaches_validation() -> None:
    """Depth MAX_DEPTH - 1 under the frame's own object: parsed, then refused for the unknown key."""
    with pytest.raises(fr.MalformedFrameError, match="Extra inputs"):
        fr.decode(nested(fr.MAX_DEPTH - 1))


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    data = '[{"\\"' * 200
    frame = fr.decode(json.dumps({"action": "input", "sessionId": "s", "data": data}), role="browser")
    assert frame.data == data


@pytest.mark.parametrize(
    "body",
    [
        '{"action":"input","sessionId":"s","data":"x","' + "k" * 10240 + '":1}',
        '{"action":"' + "k" * 10240 + '"}',
        '{"action":"input","sessionId":"s","data":"x","' + "k" * 10240 + '":{"a":1}}',
        "{" + "k" * 10240,
        b'{"action":"input","data":"\xff\xfe"}',
    ],
)
def test_refusals_are_short_and_quote_little(body: str | bytes) -> None:
    with pytest.raises(fr.MalformedFrameError) as refused:
        fr.decode(body, role="browser")
    message = str(refused.value)
    assert len(message) <= fr.MAX_REASON_CHARS
    assert "k" * (fr.QUOTE_CHARS + 1) not in message
