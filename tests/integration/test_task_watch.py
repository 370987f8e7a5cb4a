"""A task's headless run as its runner's session manager holds it for watchers: routed by ``hello``,
its output kept from the start for whoever opens it, read-only whatever the token, and ended with
the row's final word (``task``) then ``exit``. Frames are what the runner's socket would send."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shared import frames as fr
from tests.integration.refine_support import session_manager

pytestmark = pytest.mark.integration


def drain(manager: Any) -> list[Any]:
    frames = []
    while not manager.outbox.empty():
        frames.append(manager.outbox.get_nowait())
    return frames


async def settle(manager: Any) -> list[Any]:
    await asyncio.sleep(0.05)  # the coalescing timer (3 ms) and the open's task
    return drain(manager)


def test_a_watcher_sees_the_run_from_its_start_cannot_type_and_hears_how_it_ended(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager = session_manager(tmp_path)
        manager.runner_id = "runner-7"
        sid = fr.session_id_for(task_id="T-1")
        # given: a run that has printed before anyone watches
        manager.start_run("T-1", "feature/one")
        manager.run_output("T-1", "first line\nsecond")
        hello, *rest = await settle(manager)
        assert hello == fr.HelloFrame(runner_id="runner-7", sessions=[sid]) and rest == []
        assert sid in manager.held()
        # when: a browser opens the task (its token grants writing; a run takes none)
        await manager.handle(fr.OpenFrame(task_id="T-1", session_id=sid, connection_id="c1"))
        opened, replay = await settle(manager)
        # then: opened as a headless run, and the output from the start, terminal line ends
        assert opened.headless is True and opened.task_id == "T-1" and opened.to == ["c1"]
        assert (replay.seq, replay.data, replay.to) == (opened.next_seq, "first line\r\nsecond", ["c1"])
        manager.run_output("T-1", " line\n")
        [live] = await settle(manager)
        assert (live.data, live.to) == (" line\r\n", ["c1"])
        # and typing is refused with a reason, not an exit
        await manager.handle(fr.InputFrame(session_id=sid, data="x", connection_id="c1"))
        [refused] = await settle(manager)
        assert isinstance(refused, fr.ErrorFrame) and refused.code == "read_only"
        assert "running headless" in refused.message
        # when: the run ends
        manager.end_run("T-1", "complete", commit_sha="a" * 40)
        ended, exited = await settle(manager)
        assert (ended.status, ended.commit_sha, ended.to) == ("complete", "a" * 40, ["c1"])
        assert (exited.code, exited.to) == (0, ["c1"]) and sid not in manager.held()

    asyncio.run(scenario())


def test_a_run_nobody_watches_ends_with_frames_the_relay_sends_to_the_sessions_browsers(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        manager = session_manager(tmp_path)
        manager.start_run("T-2", "feature/two")
        manager.run_output("T-2", "working\n")
        manager.end_run("T-2", "failed", error="agent failed (exit 1)", error_kind="agent_exit")
        _hello, ended, exited = await settle(manager)
        assert (ended.to, ended.error_kind, exited.to, exited.code) == ([], "agent_exit", [], 1)
        assert "agent failed (exit 1)" in (exited.reason or "")

    asyncio.run(scenario())


def test_frames_of_a_watched_task_encode_in_camel_case_and_decode_back() -> None:
    frame = fr.TaskFrame(
        session_id="s-1", task_id="T-1", status="failed", error="x", error_kind="cancelled", to=["c"]
    )
    text = fr.for_browser(frame)
    assert text == (
        '{"action":"task","sessionId":"s-1","taskId":"T-1","status":"failed","error":"x",'
        '"errorKind":"cancelled"}'
    )
    assert fr.decode(text, role="runner") == frame.model_copy(update={"to": []})
    opened = fr.OpenedFrame(session_id="s-1", branch="b", next_seq=1, headless=True, task_id="T-1")
    assert '"headless":true,"taskId":"T-1"' in fr.for_browser(opened)
    assert "headless" not in fr.for_browser(fr.OpenedFrame(session_id="s-1", branch="b", next_seq=1))
    with pytest.raises(fr.ForbiddenActionError):  # a browser cannot pretend a task ended
        fr.decode(text, role="browser")
