"""A terminal session's state without I/O: seq, ring, resume, viewers, typed order, expiry.

No event loop, no pty, no socket: each call says what happened (and when) and gets back the frames
or the text to send.
"""

from __future__ import annotations

import pytest

from ec2_runner.session_state import FLUSH_BYTES, MAX_INPUT_ORDERS, SessionState
from shared import frames as fr

pytestmark = pytest.mark.unit

RING = 64 * 1024


def session(ring_bytes: int = RING, now: float = 0.0) -> SessionState:
    return SessionState("s-1", "feature/x", "T-1", ring_bytes=ring_bytes, now=now)


def output(state: SessionState, text: str) -> list[fr.OutputFrame]:
    state.buffer(text)
    return state.flush()


def kinds(frames: list[fr._Frame]) -> list[str]:
    return [type(f).__name__ for f in frames]


# ---------------------------------------------------------------- output, seq, ring


def test_output_gets_increasing_seqs_and_is_kept_in_the_ring() -> None:
    """Each flush frames what was buffered with the next seqs; the ring keeps every frame."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)

    first = output(state, "hello ")
    second = output(state, "world")

    assert [(f.seq, f.data, f.to) for f in first + second] == [(1, "hello ", ["c-1"]), (2, "world", ["c-1"])]
    assert [f.seq for f in state.ring] == [1, 2] and state.seq == 2
    assert all(f.to == [] for f in state.ring)  # the ring holds unaddressed frames


def test_buffered_output_is_coalesced_into_one_frame() -> None:
    """Pieces buffered between two flushes go out as one frame (the I/O side's coalescing timer)."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)

    for piece in ("a", "b", "c"):
        assert state.buffer(piece) is False
    frames = state.flush()

    assert [(f.seq, f.data) for f in frames] == [(1, "abc")]
    assert state.flush() == []  # nothing left to frame


def test_buffer_asks_for_a_flush_once_enough_is_waiting() -> None:
    """Past FLUSH_BYTES buffered, output is framed at once instead of waiting for the timer."""
    state = session()

    assert state.buffer("x" * (FLUSH_BYTES - 1)) is False
    assert state.buffer("x") is True


def test_a_flush_of_full_frames_keeps_the_rest_for_the_timer() -> None:
    """A burst is framed in full frames as it comes; the part that would make a small frame waits
    (for more output, or the coalescing timer's flush of everything), and nothing is lost or reordered."""
    state = session(ring_bytes=1024 * 1024)
    state.attach("c-1", False, 0, now=1.0)
    text = "".join(chr(97 + i % 26) for i in range(FLUSH_BYTES + 5000))

    assert state.buffer(text) is True
    full = state.flush(full_frames_only=True)
    rest = state.flush()

    assert len(full) == 1 and len(fr.encode(full[0]).encode()) > fr.OUTPUT_DATA_BUDGET * 9 // 10
    assert [f.seq for f in full + rest] == [1, 2]
    assert "".join(f.data for f in full + rest) == text


def test_output_with_nobody_watching_is_kept_for_later() -> None:
    """No viewer: nothing to send, but the ring keeps it for whoever attaches."""
    state = session()

    assert output(state, "early") == []

    frames = state.attach("c-1", False, 0, now=1.0)
    assert kinds(frames) == ["OpenedFrame", "OutputFrame"]
    assert (frames[1].seq, frames[1].data, frames[1].to) == (1, "early", ["c-1"])


def test_ring_overflow_drops_the_oldest_frames_and_keeps_seq_going() -> None:
    """Beyond ring_bytes the oldest frames go; seq keeps counting, oldest_seq moves on."""
    state = session(ring_bytes=RING)
    chunk = "y" * 16 * 1024

    for _ in range(10):
        output(state, chunk)

    assert state.seq == 10
    assert state.ring_size <= RING
    assert [f.seq for f in state.ring] == [7, 8, 9, 10]
    assert state.oldest_seq == 7


def test_a_flush_bigger_than_a_frame_is_split_with_consecutive_seqs() -> None:
    """Output larger than one frame's budget becomes several frames, seq after seq."""
    state = session(ring_bytes=1024 * 1024)

    output(state, "z" * (fr.OUTPUT_DATA_BUDGET * 2 + 10))

    seqs = [f.seq for f in state.ring]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 3
    assert "".join(f.data for f in state.ring) == "z" * (fr.OUTPUT_DATA_BUDGET * 2 + 10)


# ---------------------------------------------------------------- attach and resume


def test_attach_flushes_for_earlier_viewers_before_opening() -> None:
    """Output buffered when a second browser attaches goes to the first one, then the newcomer gets
    opened and the replay (which includes it): nobody misses a byte, nobody gets it twice."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    state.buffer("pending")

    frames = state.attach("c-2", False, 0, now=1.0)

    assert kinds(frames) == ["OutputFrame", "OpenedFrame", "OutputFrame"]
    assert (frames[0].to, frames[2].to) == (["c-1"], ["c-2"])
    assert frames[0].seq == frames[2].seq == 1


def test_resume_from_a_seq_replays_only_what_came_after() -> None:
    """A browser back with lastSeq 1 gets opened (nextSeq 2, resumed) and only frames 2 and 3."""
    state = session()
    for text in ("one", "two", "three"):
        output(state, text)

    frames = state.attach("c-1", False, 1, now=1.0)

    opened = frames[0]
    assert isinstance(opened, fr.OpenedFrame)
    assert (opened.next_seq, opened.resumed, opened.branch) == (2, True, "feature/x")
    assert [(f.seq, f.data) for f in frames[1:]] == [(2, "two"), (3, "three")]


def test_resume_past_the_ring_says_output_was_lost_and_replays_what_is_left() -> None:
    """lastSeq older than the ring: an output_lost error to that browser, then the ring from its oldest."""
    state = session(ring_bytes=RING)
    for _ in range(10):
        output(state, "y" * 16 * 1024)

    frames = state.attach("c-1", False, 2, now=1.0)

    assert kinds(frames)[:2] == ["ErrorFrame", "OpenedFrame"]
    error, opened = frames[0], frames[1]
    assert isinstance(error, fr.ErrorFrame) and isinstance(opened, fr.OpenedFrame)
    assert (error.code, error.to, error.session_id) == ("output_lost", ["c-1"], "s-1")
    assert opened.next_seq == state.oldest_seq == 7
    assert [f.seq for f in frames[2:]] == [7, 8, 9, 10]


def test_resume_that_is_up_to_date_replays_nothing() -> None:
    """A browser that holds everything gets opened at the next seq and no replay."""
    state = session()
    output(state, "all seen")

    frames = state.attach("c-1", False, 1, now=1.0)

    assert kinds(frames) == ["OpenedFrame"]
    assert frames[0].next_seq == 2  # type: ignore[attr-defined]


def test_a_fresh_open_is_not_a_resume_and_never_reports_loss() -> None:
    """lastSeq 0 is a first open: whatever the ring still has is replayed, no output_lost error."""
    state = session(ring_bytes=RING)
    for _ in range(10):
        output(state, "y" * 16 * 1024)

    frames = state.attach("c-1", False, 0, now=1.0)

    assert kinds(frames)[0] == "OpenedFrame"
    assert frames[0].resumed is False  # type: ignore[attr-defined]


# ---------------------------------------------------------------- viewers


def test_output_goes_to_viewers_in_groups_of_max_to() -> None:
    """Any number of browsers may watch: a frame goes out once per group of MAX_TO viewers."""
    state = session()
    for i in range(fr.MAX_TO + 3):
        state.attach(f"c-{i}", True, 0, now=0.0)

    frames = output(state, "to all")

    assert [len(f.to) for f in frames] == [fr.MAX_TO, 3]
    assert {c for f in frames for c in f.to} == {f"c-{i}" for i in range(fr.MAX_TO + 3)}
    assert {f.seq for f in frames} == {1}


def test_read_only_viewers_are_known_as_such() -> None:
    """A read-only attach stays read-only; an unknown connection is not (the relay vouches for it)."""
    state = session()
    state.attach("watcher", True, 0, now=0.0)
    state.attach("writer", False, 0, now=0.0)

    assert state.read_only("watcher") and not state.read_only("writer")
    assert not state.read_only("stranger") and not state.read_only(None)


def test_to_viewers_addresses_each_group_or_goes_unaddressed_when_alone() -> None:
    """An exit or pushed frame reaches every viewer; with none left it goes once with no ``to``."""
    state = session()
    exit_frame = fr.ExitFrame(session_id="s-1", code=0)

    assert [f.to for f in state.to_viewers(exit_frame)] == [[]]
    state.attach("c-1", False, 0, now=0.0)
    assert [f.to for f in state.to_viewers(exit_frame)] == [["c-1"]]


def test_the_last_viewer_leaving_starts_the_grace_period() -> None:
    """alone_since is set when the last viewer leaves and cleared when one attaches."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    state.attach("c-2", False, 0, now=0.0)

    state.detach("c-1", now=5.0)
    assert state.alone_since is None
    state.detach("c-2", now=6.0)
    assert state.alone_since == 6.0 and state.viewers == {}
    state.detach("c-2", now=9.0)  # a second detach changes nothing
    assert state.alone_since == 6.0

    state.attach("c-3", False, 0, now=7.0)
    assert state.alone_since is None


# ---------------------------------------------------------------- input order


def test_keystrokes_out_of_order_are_written_in_typed_order() -> None:
    """A keystroke that overtook the one before it waits for it; a duplicate is dropped."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)

    assert state.typed("c-1", 1, "a", now=1.0) == (["a"], None)
    ready, skip = state.typed("c-1", 3, "c", now=1.1)
    assert ready == [] and skip is not None  # 2 is missing: wait for it
    assert state.typed("c-1", 2, "b", now=1.2) == (["b", "c"], None)
    assert state.typed("c-1", 2, "b", now=1.3) == ([], None)  # a duplicate is dropped


def test_a_keystroke_that_never_comes_is_skipped_after_the_wait() -> None:
    """The skip callable carries on without the missing keystroke; typing goes on in order."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    state.typed("c-1", 1, "a", now=1.0)

    ready, skip = state.typed("c-1", 3, "c", now=1.1)
    assert ready == [] and skip is not None
    assert skip() == (["c"], False)
    assert state.typed("c-1", 4, "d", now=1.2) == (["d"], None)


def test_each_connection_has_its_own_typed_order() -> None:
    """Two writers' seqs are independent: one's gap never holds the other's keystrokes."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    state.attach("c-2", False, 0, now=0.0)

    assert state.typed("c-1", 2, "held", now=1.0)[0] == []
    assert state.typed("c-2", 1, "x", now=1.0) == (["x"], None)


def test_a_pages_typed_order_holds_across_its_connections() -> None:
    """A page reconnects while its old connection still relays what was typed on it: the new
    connection's keystrokes (the page numbers them on) wait for the old one's, whatever comes first,
    and the old connection's detach does not forget the page's order."""
    state = session()
    state.attach("old", False, 0, now=0.0)
    assert state.typed("old", 1, "ec", now=1.0, writer="page-0001") == (["ec"], None)
    state.detach("old", now=1.1)  # closed by the gateway; its frames 2 and 3 are still on their way
    state.attach("new", False, 0, now=1.2)

    ready, wait = state.typed("new", 4, " hi", now=1.3, writer="page-0001")
    assert ready == [] and wait is not None
    assert state.typed("old", 2, "h", now=1.4, writer="page-0001") == (["h"], None)
    assert wait() == ([], True)  # the gap is filling: wait again
    assert state.typed("old", 3, "o", now=1.6, writer="page-0001") == (["o", " hi"], None)
    assert wait() == ([], False)


def test_each_page_has_its_own_typed_order_and_their_number_is_bounded() -> None:
    """Pages' seqs are independent; a stream of made-up writer ids keeps only the newest orders."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    assert state.typed("c-1", 2, "held", now=1.0, writer="page-000a")[0] == []
    assert state.typed("c-1", 1, "x", now=1.0, writer="page-000b") == (["x"], None)
    for n in range(200):
        state.typed("c-1", 1, "y", now=2.0, writer=f"made-up-{n:04d}")
    assert len(state.inputs) == MAX_INPUT_ORDERS
    assert ("writer", "made-up-0199") in state.inputs and ("writer", "page-000a") not in state.inputs


def test_input_from_an_unseen_connection_makes_it_a_writer_viewer() -> None:
    """A relay that reconnected may send input before any resume: that browser watches again."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    state.detach("c-1", now=1.0)

    state.typed("c-9", None, "ls\r", now=2.0)

    assert state.viewers == {"c-9": False} and state.alone_since is None


def test_detach_forgets_the_connections_typed_order() -> None:
    """A connection id seen again after a detach starts its typed order afresh."""
    state = session()
    state.attach("c-1", False, 0, now=0.0)
    state.typed("c-1", 1, "a", now=1.0)

    state.detach("c-1", now=2.0)
    state.attach("c-1", False, 0, now=3.0)

    assert state.typed("c-1", 1, "again", now=4.0) == (["again"], None)  # a new connection life


# ---------------------------------------------------------------- expiry


def test_typing_and_attaching_are_activity_output_is_not() -> None:
    """An agent that keeps printing does not keep an untouched session alive."""
    state = session(now=0.0)
    state.attach("c-1", False, 0, now=10.0)
    assert state.last_activity == 10.0
    state.typed("c-1", None, "x", now=20.0)
    assert state.last_activity == 20.0

    output(state, "the agent keeps printing")

    assert state.last_activity == 20.0
    assert state.expired(now=20.0 + 31, grace_seconds=600, idle_seconds=30) == "idle timeout"


def test_a_session_alone_past_the_grace_period_expires() -> None:
    """With no browser for longer than the grace period, the session is due to end."""
    state = session(now=0.0)
    state.attach("c-1", False, 0, now=0.0)
    state.detach("c-1", now=1.0)

    assert state.expired(now=1.0 + 10, grace_seconds=10, idle_seconds=3600) is None
    assert state.expired(now=1.0 + 10.5, grace_seconds=10, idle_seconds=3600) == (
        "no browser for the grace period"
    )


def test_a_watched_active_session_does_not_expire() -> None:
    """A session with a viewer, within its idle time, is not due to end."""
    state = session(now=0.0)
    state.attach("c-1", False, 0, now=0.0)

    assert state.expired(now=100.0, grace_seconds=10, idle_seconds=3600) is None
