"""WebSocket frames: models, pure encode/decode, API Gateway's size limits, seq reassembly."""

from __future__ import annotations

import json

import pytest

from shared import frames as f

pytestmark = pytest.mark.unit


def test_browser_frames_round_trip() -> None:
    for frame in [
        f.OpenFrame(task_id="T-1", last_seq=3),
        f.OpenFrame(branch="feature/x"),
        f.ResumeFrame(session_id="s-1", last_seq=7),
        f.InputFrame(session_id="s-1", data="ls\r"),
        f.ResizeFrame(session_id="s-1", cols=120, rows=40),
        f.CloseFrame(session_id="s-1"),
        f.PushFrame(session_id="s-1", message="tidy"),
    ]:
        assert f.decode(f.encode(frame), role="browser") == frame


def test_runner_frames_round_trip() -> None:
    for frame in [
        f.HelloFrame(runner_id="r1", sessions=["s-1"]),
        f.OpenedFrame(session_id="s-1", branch="feature/x", next_seq=1, to=["c1"]),
        f.OutputFrame(session_id="s-1", seq=1, data="\x1b[31mred\x1b[0m"),
        f.ExitFrame(session_id="s-1", code=0),
        f.ErrorFrame(message="boom"),
        f.PushedFrame(session_id="s-1", commit_sha="abc"),
    ]:
        assert f.decode(f.encode(frame), role="runner") == frame


def test_the_wire_uses_camel_case_names_only() -> None:
    """Python reads snake_case; the wire (page, API Gateway, runner) speaks camelCase, and only that."""
    wire = json.loads(f.encode(f.OpenFrame(task_id="T-1", last_seq=3, connection_id="c1", read_only=True)))
    assert wire == {"action": "open", "taskId": "T-1", "lastSeq": 3, "connectionId": "c1", "readOnly": True}
    with pytest.raises(f.MalformedFrameError):
        f.decode('{"action":"resume","session_id":"s-1"}', role="browser")
    # a browser cannot smuggle a snake_case read_only past the relay's stamp either
    with pytest.raises(f.MalformedFrameError):
        f.decode('{"action":"input","sessionId":"s-1","data":"x","read_only":false}', role="browser")


def test_browser_cannot_send_runner_only_actions() -> None:
    for action in ("output", "exit", "error", "hello", "opened", "pushed", "detach"):
        with pytest.raises(f.ForbiddenActionError):
            f.decode(json.dumps({"action": action, "sessionId": "s", "seq": 1, "data": "x"}), role="browser")


def test_runner_cannot_send_browser_actions() -> None:
    with pytest.raises(f.ForbiddenActionError):
        f.decode('{"action":"input","sessionId":"s","data":"x"}', role="runner")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1,2]",
        '{"no":"action"}',
        '{"action":"explode"}',
        '{"action":"input","sessionId":"s"}',
        '{"action":"resize","sessionId":"s","cols":0,"rows":5}',
        '{"action":"open"}',
        '{"action":"open","taskId":"a","branch":"b"}',
        '{"action":"input","sessionId":"s","data":"x","extra":1}',
        '{"action":"input","sessionId":"s","data":"x","seq":1,"writer":"short"}',
        '{"action":"input","sessionId":"s","data":"x","seq":1,"writer":"has spaces in it"}',
        '{"action":"input","sessionId":"s","data":"x","seq":1,"writer":"' + "w" * 65 + '"}',
        '{"action":"input","sessionId":"s","data":"x","seq":1,"writer":7}',
    ],
)
def test_malformed_frames_are_refused(raw: str) -> None:
    with pytest.raises(f.MalformedFrameError):
        f.decode(raw, role="browser")


def test_message_over_128_kb_is_refused_before_parsing() -> None:
    raw = json.dumps({"action": "input", "sessionId": "s", "data": "x" * (f.MAX_MESSAGE_BYTES + 1)})
    with pytest.raises(f.FrameTooLargeError):
        f.decode(raw, role="browser")


def test_encode_refuses_frames_over_32_kb() -> None:
    with pytest.raises(f.FrameTooLargeError):
        f.encode(f.OutputFrame(session_id="s", seq=1, data="x" * f.MAX_FRAME_BYTES))


def test_output_split_keeps_every_frame_under_budget_even_with_escapes() -> None:
    """Control characters grow six-fold in JSON; splitting measures the encoded size."""
    text = ("\x1b[0m" * 5000) + ("é" * 20000) + ("plain " * 10000)
    out = f.output_frames("s-1", 5, text)
    assert "".join(fr.data for fr in out) == text
    assert [fr.seq for fr in out] == list(range(5, 5 + len(out)))
    assert max(len(f.encode(fr).encode()) for fr in out) <= f.OUTPUT_DATA_BUDGET


def test_a_plain_burst_goes_out_in_nearly_full_frames() -> None:
    """Plain text fills each frame to its budget (each frame is a relay call): a 1 MB burst takes
    the fewest frames the budget allows, every one of them within it."""
    text = "y" * 1_000_000
    out = f.output_frames("s-1", 1, text)
    sizes = [len(f.encode(fr).encode()) for fr in out]
    assert "".join(fr.data for fr in out) == text
    assert max(sizes) <= f.OUTPUT_DATA_BUDGET
    assert min(sizes[:-1]) > f.OUTPUT_DATA_BUDGET - 100


def test_for_browser_strips_routing() -> None:
    frame = f.OutputFrame(session_id="s", seq=1, data="x", to=["c1", "c2"])
    assert "to" not in json.loads(f.for_browser(frame))
    assert json.loads(f.encode(frame))["to"] == ["c1", "c2"]


def test_session_id_is_stable_and_distinct_per_grant() -> None:
    assert f.session_id_for(task_id="A") == f.session_id_for(task_id="A")
    ids = {f.session_id_for(task_id="A"), f.session_id_for(task_id="B"), f.session_id_for(branch="A")}
    assert len(ids) == 3


def test_reassembler_orders_and_drops_duplicates() -> None:
    r = f.SeqReassembler()
    assert r.push(3, "c") == []  # before opened: held
    assert r.start(2) == []
    assert r.push(2, "b") == ["b", "c"]
    assert r.push(2, "b") == [] and r.push(1, "a") == []
    assert r.push(5, "e") == [] and r.push(4, "d") == ["d", "e"]
    assert r.last_seq == 5


def test_input_orderer_writes_keystrokes_in_typed_order() -> None:
    """API Gateway may invoke a connection's messages concurrently: seq puts keystrokes back in order."""
    o = f.InputOrderer()
    assert o.push(2, "b") == []
    assert o.push(1, "a") == ["a", "b"]
    assert o.push(1, "a") == []  # a duplicate
    assert o.push(None, "raw") == ["raw"]  # no seq: as it comes
    assert o.push(3, "c") == ["c"]


def test_a_wait_for_a_gap_skips_it_only_when_nothing_came_meanwhile() -> None:
    """The runner waits for a missing keystroke; a wait in which earlier ones arrived (a page's old
    connection still relaying its backlog) starts over, and one with no progress skips the gap."""
    o = f.InputOrderer()
    assert o.push(1, "a") == ["a"] and not o.start_wait()  # nothing held: nothing to wait for
    assert o.push(4, "d") == [] and o.start_wait()
    assert o.push(5, "e") == [] and not o.start_wait()  # one wait at a time
    assert o.push(2, "b") == ["b"]  # the gap is filling
    assert o.waited() == ([], True)  # so the wait starts over, nothing skipped
    assert o.waited() == (["d", "e"], False)  # a whole wait with no progress: seq 3 is skipped
    assert o.push(3, "late") == []
    assert o.push(6, "f") == ["f"] and not o.start_wait()


def test_a_wait_whose_gap_filled_ends_quietly() -> None:
    o = f.InputOrderer()
    assert o.push(2, "b") == [] and o.start_wait()
    assert o.push(1, "a") == ["a", "b"]
    assert o.waited() == ([], False)
    assert o.push(4, "d") == [] and o.start_wait()  # a new gap, a new wait
    assert o.waited() == (["d"], False)


def test_input_orderer_skips_a_gap_that_never_fills() -> None:
    o = f.InputOrderer(max_held=2)
    assert o.push(2, "y") == [] and o.push(3, "z") == []
    assert o.skip_gap() == ["y", "z"]  # the runner's timer gave up on seq 1 (refused by the relay)
    assert o.push(1, "late") == []
    assert (
        o.push(5, "e") == [] and o.push(6, "f") == [] and o.push(7, "g") == ["e", "f", "g"]
    )  # too many held
