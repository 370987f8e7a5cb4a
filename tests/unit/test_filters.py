"""The local event source applies FilterCriteria as Lambda does."""

from __future__ import annotations

import pytest

from local.poller import matches, passes

pytestmark = pytest.mark.unit

PENDING_PATTERN = {
    "eventName": ["INSERT", "MODIFY"],
    "dynamodb": {"NewImage": {"status": {"S": ["pending"]}}},
}


def record(event: str, status: str | None) -> dict:
    image = {"id": {"S": "t"}} | ({"status": {"S": status}} if status else {})
    return {"eventName": event, "dynamodb": {"NewImage": image}}


@pytest.mark.parametrize(
    ("event", "status", "expected"),
    [
        ("INSERT", "pending", True),
        ("MODIFY", "pending", True),
        ("MODIFY", "processing", False),
        ("REMOVE", "pending", False),
        ("INSERT", None, False),
    ],
)
def test_pending_filter(event: str, status: str | None, expected: bool) -> None:
    assert matches(PENDING_PATTERN, record(event, status)) is expected


def test_operators() -> None:
    assert matches({"a": [{"prefix": "feat"}]}, {"a": "feature/x"})
    assert not matches({"a": [{"anything-but": ["x"]}]}, {"a": "x"})
    assert matches({"a": [{"exists": False}]}, {})
    assert matches({"n": [{"numeric": [">", 1, "<=", 5]}]}, {"n": 5})
    assert not matches({"n": [{"numeric": [">", 1]}]}, {"n": "nope"})


def test_any_pattern_passes_and_no_patterns_pass_everything() -> None:
    assert passes([], {"x": 1})
    assert passes([{"x": [2]}, {"x": [1]}], {"x": 1})
    assert not passes([{"x": [2]}], {"x": 1})


def test_bad_pattern_is_an_error() -> None:
    with pytest.raises(ValueError, match="lists"):
        matches({"a": "scalar"}, {"a": "scalar"})
