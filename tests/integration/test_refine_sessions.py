"""Refine terminal sessions on the runner: one session per task or branch, whatever arrives at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import git
import pytest

from ec2_runner.terminal import SessionManager
from shared import frames as fr
from tests.conftest import ROOT
from tests.fixtures import wait_until
from tests.integration.refine_support import (
    KIRO_PROMPT,
    Browser,
    FakeKiro,
    browser_token,
    process_running,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]


def test_concurrent_opens_of_one_task_share_one_session(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """Two browsers opening the same task at the same moment meet in one session: one worktree, one
    agent process, the same output on both; stopping the runner leaves no agent behind."""
    kiro = FakeKiro(tmp_path)
    with running_gateway(moto_endpoint, table) as gw:
        # the task lookup takes as long as a table read: both opens are in flight together
        runner = running_runner(
            gw, lambda: session_manager(tmp_path, kiro.argv_for, kiro.env, resolve_delay=0.3)
        )
        runner.__enter__()
        try:

            async def scenario() -> None:
                a = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
                b = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
                # when
                opened_a, opened_b = await asyncio.gather(
                    a.open(task_id="T-1", timeout=10), b.open(task_id="T-1", timeout=10)
                )
                # then
                assert opened_a.session_id == opened_b.session_id
                await a.wait_text(KIRO_PROMPT, 10)
                await b.wait_text(KIRO_PROMPT, 10)
                await a.type("typed in a\r")
                await a.wait_text("you said: typed in a")
                await b.wait_text("you said: typed in a")
                await b.type("typed in b\r")
                await a.wait_text("you said: typed in b")
                await b.wait_text("you said: typed in b")
                await a.close()
                await b.close()

            asyncio.run(scenario())
            assert len(kiro.events("start")) == 1, kiro.events("start")
            assert len(list((tmp_path / "worktrees").iterdir())) == 1
        finally:
            runner.__exit__(None, None, None)
    pids = [e["pid"] for e in kiro.events("start")]
    wait_until(lambda: not any(process_running(p) for p in pids), 10, what="the agents to end")


def test_read_only_open_only_watches_a_live_session(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """A read-only token cannot start a session (no worktree, no agent, no slot): with nothing open it
    gets a clear ``no_session`` error; once a writer has opened the session, it watches it."""
    kiro = FakeKiro(tmp_path)
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, kiro.argv_for, kiro.env)),
    ):

        async def scenario() -> None:
            watcher = await Browser.connect(gw.ws_url, browser_token(task="T-2", read_only=True))
            # when
            await watcher.send(fr.OpenFrame(task_id="T-2"))
            # then
            refused = await watcher.wait_frame(fr.ErrorFrame, 10)
            assert refused.code == "no_session" and "read-only" in refused.message
            assert not any(isinstance(f, fr.OpenedFrame) for f in watcher.frames)
            assert kiro.events("start") == []
            assert not (tmp_path / "worktrees").exists() or list((tmp_path / "worktrees").iterdir()) == []
            # a writer opens it; now the same read-only open attaches and watches
            writer = await Browser.connect(gw.ws_url, browser_token(task="T-2"))
            await writer.open(task_id="T-2", timeout=10)
            await watcher.open(task_id="T-2", timeout=10)
            await writer.type("watch this\r")
            await watcher.wait_text("you said: watch this", 10)
            assert len(kiro.events("start")) == 1
            await watcher.close()
            await writer.close()

        asyncio.run(scenario())


def test_runner_refuses_a_read_only_open_of_no_session(tmp_path: Path) -> None:
    """The runner does not trust the relay alone: a read-only open that reaches it with no such
    session starts nothing and answers ``no_session``."""
    manager = session_manager(tmp_path)
    sid = fr.session_id_for(task_id="T-1")

    async def scenario() -> list[object]:
        manager.start()
        await manager.handle(
            fr.OpenFrame(task_id="T-1", session_id=sid, connection_id="c-ro", read_only=True)
        )
        frames = [await asyncio.wait_for(manager.outbox.get(), 5)]
        await asyncio.sleep(0.2)  # anything else it would have sent comes within this
        while not manager.outbox.empty():
            frames.append(manager.outbox.get_nowait())
        held = manager.held()
        await manager.shutdown()
        assert held == []
        return frames

    frames = asyncio.run(scenario())
    assert [type(f) for f in frames] == [fr.ErrorFrame]
    error = frames[0]
    assert isinstance(error, fr.ErrorFrame)
    assert (error.code, error.session_id, error.to) == ("no_session", sid, ["c-ro"])
    assert not (tmp_path / "worktrees").exists() or list((tmp_path / "worktrees").iterdir()) == []


def test_a_kept_dirty_worktree_is_reopened_with_its_work(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """A session closed with uncommitted work keeps its worktree; opening the same branch again lands
    in that very folder, the work still there, and the agent resumes the conversation it had there."""
    kiro = FakeKiro(tmp_path)
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, kiro.argv_for, kiro.env)),
    ):
        token = browser_token(branch="feature/wip")

        async def scenario() -> None:
            first = await Browser.connect(gw.ws_url, token)
            await first.open(branch="feature/wip", timeout=10)
            await first.wait_text(KIRO_PROMPT, 10)
            await first.type('[fake:write path=wip.txt text="uncommitted work"]\r')
            await first.wait_text("[y/n/t]", 10)
            await first.type("y\r")
            await first.wait_text("Done: wrote wip.txt", 10)
            # when: the user closes the session, then opens the branch again at once
            await first.send(fr.CloseFrame(session_id=first.session_id))
            await first.wait_frame(fr.ExitFrame, 10)
            await first.close()
            again = await Browser.connect(gw.ws_url, token)
            await again.open(branch="feature/wip", timeout=10)
            # then
            await again.wait_text("wip.txt", 10)  # the git status printed at open lists the work
            await again.wait_text("Resumed the previous conversation in", 10)
            await again.close()

        asyncio.run(scenario())
        starts = kiro.events("start")
        assert [e["resume"] for e in starts] == [False, True]
        assert starts[0]["cwd"] == starts[1]["cwd"]
        assert (Path(starts[1]["cwd"]) / "wip.txt").read_text() == "uncommitted work\n"
        assert [p.name for p in (tmp_path / "worktrees").iterdir()] == [Path(starts[0]["cwd"]).name]


class Outbox:
    """Takes everything a session manager sends, as the runner's socket would."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.frames: list[object] = []
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            self.frames.append(await self.manager.outbox.get())
            self.manager.frame_sent()

    async def wait(self, predicate: Callable[[list[object]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.frames):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last frames {self.frames[-3:]}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._task.cancel()


def exits(frames: list[object]) -> list[fr.ExitFrame]:
    return [f for f in frames if isinstance(f, fr.ExitFrame)]


def test_only_input_keeps_a_session_from_the_idle_timeout(tmp_path: Path) -> None:
    """An agent that keeps printing does not keep its session alive: typing does, and once nobody
    types for the idle timeout the session ends, output or not."""
    printing = ["/bin/bash", "--norc", "--noprofile", "-c", "while :; do echo tick; sleep 0.05; done"]
    manager = session_manager(tmp_path, printing, idle_seconds=1.0, reap_interval=0.1, show_git_status=False)
    sid = fr.session_id_for(branch="feature/busy")

    async def scenario() -> None:
        manager.start()
        out = Outbox(manager)
        await manager.handle(fr.OpenFrame(branch="feature/busy", session_id=sid, connection_id="c-1"))
        await out.wait(lambda fs: any(isinstance(f, fr.OutputFrame) for f in fs), 10, "output")
        # given: someone types now and then for twice the idle timeout: the session stays
        typed_until = time.monotonic() + 2.0
        while time.monotonic() < typed_until:
            await manager.handle(fr.InputFrame(session_id=sid, connection_id="c-1", data=" "))
            await asyncio.sleep(0.3)
            assert exits(out.frames) == []
        # when: nobody types any more, while the agent keeps printing
        stopped = time.monotonic()
        await out.wait(lambda fs: bool(exits(fs)), 5, "the idle timeout")
        # then
        assert time.monotonic() - stopped >= 0.9
        assert [e.reason for e in exits(out.frames)] == ["idle timeout"]
        out.stop()
        await manager.shutdown()

    asyncio.run(scenario())


def test_every_viewer_gets_output_and_exit_beyond_one_frames_routing_list(tmp_path: Path) -> None:
    """A runner frame names at most MAX_TO connections; a session with more viewers than that sends
    each frame once per group, so the 33rd viewer sees the output and the exit like the first."""
    manager = session_manager(tmp_path, show_git_status=False)
    sid = fr.session_id_for(branch="feature/crowd")
    viewers = [f"c-{i}" for i in range(fr.MAX_TO + 8)]

    def reached(frames: list[object], kind: type, needle: str | None = None) -> set[str]:
        return {
            to
            for f in frames
            if isinstance(f, kind) and (needle is None or needle in getattr(f, "data", ""))
            for to in getattr(f, "to", [])
        }

    async def scenario() -> None:
        manager.start()
        out = Outbox(manager)
        await manager.handle(fr.OpenFrame(branch="feature/crowd", session_id=sid, connection_id=viewers[0]))
        for conn in viewers[1:]:
            await manager.handle(fr.ResumeFrame(session_id=sid, connection_id=conn, read_only=True))
        await out.wait(
            lambda fs: len(reached(fs, fr.OpenedFrame)) == len(viewers), 10, "every viewer attached"
        )
        # when
        await manager.handle(
            fr.InputFrame(session_id=sid, connection_id=viewers[0], data="echo crowd-$((2*21))\r")
        )
        # then
        await out.wait(
            lambda fs: reached(fs, fr.OutputFrame, "crowd-42") == set(viewers), 10, "output to all"
        )
        await manager.handle(fr.CloseFrame(session_id=sid, connection_id=viewers[0]))
        await out.wait(lambda fs: reached(fs, fr.ExitFrame) == set(viewers), 10, "exit to all")
        assert all(len(f.to) <= fr.MAX_TO for f in out.frames if hasattr(f, "to"))
        out.stop()
        await manager.shutdown()

    asyncio.run(scenario())


def _remote_refs(tmp_path: Path) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(tmp_path / "remote.git"), "for-each-ref"], capture_output=True, text=True
    ).stdout


def test_a_session_left_alone_ends_after_the_grace_period_and_commits_nothing(tmp_path: Path) -> None:
    """The browser goes away: the session waits out the grace period, then ends; the work typed in it
    stays in its worktree, uncommitted and unpushed (only the user's push commits)."""
    manager = session_manager(tmp_path, grace_seconds=1.0, reap_interval=0.1, show_git_status=False)
    sid = fr.session_id_for(branch="feature/left")
    refs_before = _remote_refs(tmp_path)

    async def scenario() -> Path:
        manager.start()
        out = Outbox(manager)
        await manager.handle(fr.OpenFrame(branch="feature/left", session_id=sid, connection_id="c-1"))
        await out.wait(lambda fs: any(isinstance(f, fr.OpenedFrame) for f in fs), 10, "opened")
        await manager.handle(
            fr.InputFrame(
                session_id=sid, connection_id="c-1", data="echo draft > draft.txt; echo typed-$((6*7))\r"
            )
        )
        await out.wait(
            lambda fs: any("typed-42" in getattr(f, "data", "") for f in fs), 10, "the command to run"
        )
        path = manager.sessions[sid].path
        assert path is not None
        # when: the browser disconnects
        left = time.monotonic()
        await manager.handle(fr.DetachFrame(session_id=sid, connection_id="c-1"))
        await asyncio.sleep(0.5)
        assert sid in manager.sessions  # within the grace period it lives on
        await out.wait(lambda fs: sid not in manager.sessions, 10, "the grace period to end it")
        assert time.monotonic() - left >= 0.9
        out.stop()
        await manager.shutdown()
        return path

    path = asyncio.run(scenario())
    # then: nothing was committed or pushed; the draft is still there, uncommitted
    assert _remote_refs(tmp_path) == refs_before
    assert (path / "draft.txt").read_text() == "draft\n"
    status = git.Repo(path).git.status("--porcelain")
    assert "draft.txt" in status


def test_a_browser_resuming_past_the_ring_is_told_output_was_lost(tmp_path: Path) -> None:
    """The ring is bounded: a browser that comes back after more output than it holds gets the
    tail and an ``output_lost`` error, never a silent gap."""
    manager = session_manager(tmp_path, ring_bytes=64 * 1024, show_git_status=False)
    sid = fr.session_id_for(branch="feature/ring")

    async def scenario() -> list[object]:
        manager.start()
        out = Outbox(manager)
        await manager.handle(fr.OpenFrame(branch="feature/ring", session_id=sid, connection_id="c-1"))
        await out.wait(lambda fs: any(isinstance(f, fr.OpenedFrame) for f in fs), 10, "opened")
        await manager.handle(fr.DetachFrame(session_id=sid, connection_id="c-1"))
        # 300 KB of output while nobody watches
        await manager.handle(
            fr.InputFrame(
                session_id=sid,
                connection_id="c-1",
                data="head -c 300000 /dev/zero | tr '\\0' y; echo; echo RING-END\r",
            )
        )
        await asyncio.sleep(0)
        deadline = time.monotonic() + 10
        while not any("RING-END" in f.data for f in manager.sessions[sid].state.ring):
            assert time.monotonic() < deadline, "the output never reached the ring"
            await asyncio.sleep(0.05)
        # when: the browser resumes from the first frame it had
        seen = len(out.frames)
        await manager.handle(fr.ResumeFrame(session_id=sid, connection_id="c-2", last_seq=1))
        await out.wait(lambda fs: any(isinstance(f, fr.OpenedFrame) for f in fs[seen:]), 10, "reopened")
        frames = out.frames[seen:]
        out.stop()
        await manager.shutdown()
        return frames

    frames = asyncio.run(scenario())
    errors = [f for f in frames if isinstance(f, fr.ErrorFrame)]
    assert [e.code for e in errors] == ["output_lost"]
    replayed = "".join(f.data for f in frames if isinstance(f, fr.OutputFrame))
    assert "RING-END" in replayed and len(replayed) <= 64 * 1024 + fr.MAX_FRAME_BYTES


def test_a_session_reopened_after_a_runner_restart_finds_its_uncommitted_work(tmp_path: Path) -> None:
    """A runner process died while its session's folder held uncommitted work; the next runner's
    session of the same branch opens that folder as it was."""
    sid = fr.session_id_for(branch="feature/restart")
    # given: a runner process that opened the session's folder, wrote into it, and died
    script = (
        "import os, sys; from pathlib import Path\n"
        "from tests.integration.refine_support import workspace\n"
        "ws = workspace(Path(sys.argv[1]))\n"
        "co = ws.checkout('feature/restart', sys.argv[2])\n"
        "(co.path / 'notes.txt').write_text('typed before the crash')\n"
        "print(co.path, flush=True); os._exit(0)\n"
    )
    died = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), f"term-{sid}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    left = Path(died.stdout.strip())
    manager = session_manager(tmp_path, show_git_status=False)

    async def scenario() -> Path | None:
        manager.start()
        out = Outbox(manager)
        # when
        await manager.handle(fr.OpenFrame(branch="feature/restart", session_id=sid, connection_id="c-1"))
        await out.wait(lambda fs: any(isinstance(f, fr.OpenedFrame) for f in fs), 10, "opened")
        await manager.handle(fr.InputFrame(session_id=sid, connection_id="c-1", data="cat notes.txt\r"))

        # then
        def shown(frames: list[object]) -> bool:
            return "typed before the crash" in "".join(getattr(f, "data", "") for f in frames)

        await out.wait(shown, 10, "the notes")
        path = manager.sessions[sid].path
        out.stop()
        await manager.shutdown()
        return path

    assert asyncio.run(scenario()) == left
