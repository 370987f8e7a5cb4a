"""Which stream records become a signal to the runners (shared.dispatch.signal_for)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.dispatch import MalformedRecordError, signal_for
from shared.models import TaskSignal, from_dynamodb
from tests.conftest import EVENTS

pytestmark = pytest.mark.unit


def images(event_file: str, index: int = 0) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    record = json.loads((EVENTS / event_file).read_text())["Records"][index]
    ddb = record.get("dynamodb", {})
    new, old = ddb.get("NewImage"), ddb.get("OldImage")
    return record["eventName"], from_dynamodb(new) if new else None, from_dynamodb(old) if old else None


def test_insert_of_a_pending_row_signals_with_reason_insert() -> None:
    """The seed's example row, inserted pending, is one signal naming its id."""
    signal = signal_for(*images("stream_insert.json"))
    assert signal == TaskSignal(task_id="3f6c1c8e-2b7a-4d0e-9a51-7c2f0d4e8a10", reason="insert")


def test_insert_of_a_row_that_is_not_pending_is_quiet() -> None:
    _, new, _ = images("stream_insert.json")
    assert signal_for("INSERT", {**new, "status": "complete"}, None) is None


def test_reset_from_failed_to_pending_signals_again() -> None:
    """The seed's fix (update-item status back to pending) must re-run the task."""
    signal = signal_for(*images("stream_modify_reset.json"))
    assert signal is not None and signal.reason == "reset from failed"


def test_runner_claim_pending_to_processing_is_quiet() -> None:
    assert signal_for(*images("stream_modify_processing.json")) is None


def test_modify_that_stays_pending_is_quiet() -> None:
    """A pending row edited while still pending was already signalled by its INSERT."""
    _, new, _ = images("stream_insert.json")
    assert signal_for("MODIFY", new, dict(new)) is None


def test_remove_is_quiet_even_without_images() -> None:
    assert signal_for("REMOVE", None, None) is None


@pytest.mark.parametrize(
    ("index", "message"),
    [(0, "no NewImage"), (1, "no string id"), (3, "unknown eventName")],
    ids=["no-new-image", "no-id", "unknown-event-name"],
)
def test_malformed_records_raise_malformed_record_error(index: int, message: str) -> None:
    with pytest.raises(MalformedRecordError, match=message):
        signal_for(*images("stream_malformed.json", index))


def test_the_good_record_of_the_malformed_batch_signals() -> None:
    assert signal_for(*images("stream_malformed.json", 2)) is not None


def test_non_string_id_is_malformed() -> None:
    _, new, _ = images("stream_insert.json")
    with pytest.raises(MalformedRecordError):
        signal_for("INSERT", {**new, "id": 42}, None)
