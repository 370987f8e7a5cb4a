"""The runner's reading of the instance metadata service (IMDSv2) and of its stop notices, against
the loopback stand-in of an instance (tests/fakes/instance.py) and a port nothing listens on."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Iterator

import pytest

from ec2_runner.instance_notices import (
    LIFECYCLE_PATH,
    SPOT_PARK_RESERVE_SECONDS,
    InstanceMetadata,
    MetadataError,
    NoticeWatcher,
    StopNotice,
    read_notice,
)
from tests.fakes.instance import InstanceTwin

pytestmark = pytest.mark.integration


@pytest.fixture
def twin() -> Iterator[InstanceTwin]:
    with InstanceTwin(group="stack-runners", hook="aipm-warm-stop") as running:
        yield running


def test_an_instance_in_service_has_no_notice_and_every_read_carries_a_session_token(
    twin: InstanceTwin,
) -> None:
    metadata = InstanceMetadata(twin.metadata_url)
    assert read_notice(metadata) is None
    assert read_notice(metadata) is None
    # one token for both looks (two reads each), fetched with a TTL
    assert [r.path for r in twin.requests if r.method == "PUT"] == ["/latest/api/token"]
    reads = [r for r in twin.requests if r.method == "GET"]
    assert len(reads) == 4 and all(r.token_ok for r in reads)


def test_a_scale_in_is_a_lifecycle_notice_with_the_configured_grace(twin: InstanceTwin) -> None:
    twin.scale_in()
    notice = read_notice(InstanceMetadata(twin.metadata_url))
    assert notice == StopNotice("scale-in", lifecycle=True)
    assert notice.grace(30) == 30


def test_a_spot_notice_leaves_its_running_tasks_what_the_two_minutes_leave_after_parking(
    twin: InstanceTwin,
) -> None:
    twin.interrupt_spot(seconds=120)
    notice = read_notice(InstanceMetadata(twin.metadata_url))
    assert notice is not None and not notice.lifecycle and notice.deadline is not None
    now = notice.deadline - dt.timedelta(seconds=120)
    assert notice.grace(30, now=now) == 30  # 120 - 60 leaves 60: the configured 30 holds
    assert notice.grace(90, now=now) == 120 - SPOT_PARK_RESERVE_SECONDS
    assert notice.grace(30, now=notice.deadline) == 0  # too late to wait: park at once


def test_a_refused_session_token_is_fetched_again_once(twin: InstanceTwin) -> None:
    """The service restarted (or the token expired): its 401 makes a new token, not an error."""
    metadata = InstanceMetadata(twin.metadata_url)
    assert read_notice(metadata) is None
    twin._tokens.clear()  # the service forgot every token it gave
    assert metadata.get(LIFECYCLE_PATH) == "InService"
    assert [r.path for r in twin.requests if r.method == "PUT"] == ["/latest/api/token"] * 2


def test_an_unreachable_service_is_a_metadata_error_saying_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(MetadataError, match=r"instance metadata token: .*refused"):
        read_notice(InstanceMetadata(f"http://127.0.0.1:{port}", timeout=1))


def test_an_unreadable_spot_notice_still_stops_the_runner_with_its_grace(
    twin: InstanceTwin, caplog: pytest.LogCaptureFixture
) -> None:
    """A body that is not what AWS documents is still a notice: stopping is the safe reading."""
    twin.spot_action = {"action": "terminate", "time": "soon"}
    with caplog.at_level(logging.WARNING):
        notice = read_notice(InstanceMetadata(twin.metadata_url))
    assert notice == StopNotice("spot interruption", lifecycle=False)
    assert notice.grace(30) == 30
    assert "unreadable Spot instance-action" in caplog.text


def test_the_watcher_says_an_outage_once_and_calls_back_once_with_the_first_notice(
    twin: InstanceTwin, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen: list[StopNotice] = []
    down = NoticeWatcher(InstanceMetadata(f"http://127.0.0.1:{port}", timeout=1), seen.append)
    with caplog.at_level(logging.WARNING):
        assert down.check() is None and down.check() is None
    assert caplog.text.count("cannot read stop notices") == 1 and not seen
    watcher = NoticeWatcher(InstanceMetadata(twin.metadata_url), seen.append)
    twin.interrupt_spot()
    watcher.check()
    twin.scale_in()
    watcher.check()
    assert [n.reason.split(" (")[0] for n in seen] == ["spot interruption"]
    assert watcher.lifecycle_seen.is_set()  # remembered: the action is completed at the end
