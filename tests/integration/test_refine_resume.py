"""Refine terminal resilience: resume without loss, the runner going away, the real agent's REPL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ec2_runner import terminal
from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from shared import frames as fr
from tests.conftest import FAKE_AGENT, ROOT
from tests.integration.refine_support import (
    KIRO_PROMPT,
    SHELL_ENV,
    Browser,
    FakeKiro,
    browser_token,
    error_codes,
    running_gateway,
    running_runner,
    session_manager,
    workspace,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

BURST = 5_000_000


def test_disconnect_and_resume_lose_nothing_in_a_5mb_burst(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """A browser that drops mid-burst and resumes from its last seq ends with every byte, once;
    no frame the runner sends is over 32 KB."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            token = browser_token(branch="feature/burst")
            first = await Browser.connect(gw.ws_url, token)
            await first.open(branch="feature/burst")
            await first.wait_text("$ ")
            start = len(first.text)
            t0 = time.perf_counter()
            await first.type(f"head -c {BURST} /dev/zero | tr '\\0' x; echo; echo END-$((20+22))\r")
            await first.wait_for(lambda b: b.text.count("x", start) > 200_000, 10)
            await first.close()
            await asyncio.sleep(0.3)  # output keeps coming while nobody watches

            second = await Browser.connect(gw.ws_url, token)
            second.reasm = fr.SeqReassembler()
            await second.send(fr.ResumeFrame(session_id=first.session_id, last_seq=first.reasm.last_seq))
            await second.wait_text("END-42", 20)
            elapsed = time.perf_counter() - t0
            whole = first.text + second.text
            # count after the echoed command line (its own "x" is not output)
            body = whole[whole.index("END-$((20+22))", start) :]
            xs = body.count("x")
            assert xs == BURST, f"got {xs} of {BURST} bytes"
            assert "output_lost" not in error_codes(second)
            print(f"\n5 MB burst, reconnect included: {elapsed:.2f} s ({BURST / elapsed / 1e6:.1f} MB/s)")
            await second.close()

        asyncio.run(scenario())
        assert 0 < gw.max_message_by_role["runner"] <= fr.MAX_FRAME_BYTES


def test_a_pages_keystrokes_stay_in_typed_order_across_its_reconnect(
    moto_endpoint: str, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page reconnects while its old connection's last keystrokes are still being relayed: what it
    types on the new connection (numbered on, under the same ``writer``) reaches the shell after
    them, so the command runs as typed, with nothing lost or interleaved. The old connection's
    backlog trickles in over longer than one wait for the gap (2 s here), one key a second: each
    wait that saw one arrive starts over."""
    monkeypatch.setattr(terminal, "INPUT_GAP_SECONDS", 2.0)
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            token = browser_token(branch="feature/order")
            writer = "page-" + os.urandom(8).hex()
            keys = list("echo in-order-$((6*7))\r")
            old = await Browser.connect(gw.ws_url, token)
            await old.open(branch="feature/order")
            await old.wait_text("$ ")
            sid = old.session_id
            assert sid

            def key(n: int) -> fr.InputFrame:
                return fr.InputFrame(session_id=sid, data=keys[n - 1], seq=n, writer=writer)

            for n in range(1, 6):
                await old.send(key(n))
            new = await Browser.connect(gw.ws_url, token)
            await new.send(fr.ResumeFrame(session_id=sid, last_seq=old.reasm.last_seq))
            await new.wait_frame(fr.OpenedFrame, 10)
            # when: the new connection types on first, the old one's keys 6-9 come after it
            for n in range(10, len(keys) + 1):
                await new.send(key(n))
            await asyncio.sleep(0.2)
            for n in range(6, 10):
                await old.send(key(n))
                await asyncio.sleep(1.0)
            # then
            await new.wait_text("in-order-42\r\n", 15)
            assert "echo in-order-$((6*7))" in new.text
            await old.close()
            await new.close()

        asyncio.run(scenario())


def test_killed_runner_gives_the_browser_runner_gone_then_no_runner_never_exit(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """``kill -9`` of the runner mid-session: the browser hears ``runner_gone`` at once, and its next
    keystroke gets ``no_runner`` (resume later), never a silent hang and never an ``exit``."""
    with running_gateway(moto_endpoint, table) as gw:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.refine_runner_proc", gw.ws_url, str(tmp_path)],
            cwd=ROOT,
            env=env,
        )
        try:

            async def scenario() -> None:
                deadline = time.monotonic() + 15
                while not gw.max_message_by_role.get("runner") and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                b = await Browser.connect(gw.ws_url, browser_token(branch="feature/kill"))
                await b.open(branch="feature/kill", timeout=10)
                await b.type("echo alive-$((2*21))\r")
                await b.wait_text("alive-42")
                os.kill(proc.pid, signal.SIGKILL)
                await b.wait_for(lambda br: "runner_gone" in error_codes(br), 10)
                await b.type("echo anyone\r")
                refusal = await b.wait_frame(fr.ErrorFrame, 5, code="no_runner")
                assert refusal.session_id == b.session_id and b.exited is None
                await b.close()

            asyncio.run(scenario())
        finally:
            proc.kill()
            proc.wait()


def test_stopped_runner_sends_exit_to_its_browsers(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        runner = running_runner(gw, lambda: session_manager(tmp_path))
        svc = runner.__enter__()

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/stop"))
            await b.open(branch="feature/stop")
            await asyncio.get_running_loop().run_in_executor(None, svc.stop)
            exit_frame = await b.wait_frame(fr.ExitFrame, 10)
            assert exit_frame.reason == "runner stopping"
            await b.close()

        try:
            asyncio.run(scenario())
        finally:
            runner.__exit__(None, None, None)


def test_fake_kiro_repl_resumes_and_sees_resize(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """The agent's interactive command (fake kiro-cli) runs in the pty: prompt, echo, ``--resume``, size."""
    agent = make_agent(
        AgentSettings(
            agent="kiro", command=f"{FAKE_AGENT / 'kiro-cli'} chat --no-interactive --trust-all-tools"
        )
    )
    env = {**SHELL_ENV, "PATH": f"{FAKE_AGENT}:/usr/bin:/bin"}
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(
            gw, lambda: session_manager(tmp_path, argv=agent.interactive_argv, env=env, resume="always")
        ),
    ):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/kiro"))
            await b.open(branch="feature/kiro", cols=100, rows=33)
            # resume=always asks for it even in a fresh folder, where there is nothing to resume
            await b.wait_text("No previous conversation in")
            assert "Resumed" not in b.text
            await b.wait_text("\x1b[38;5;141m> \x1b[0m")
            await b.type("stty size\r")
            await b.wait_text("33 100")
            await b.send(fr.ResizeFrame(session_id=b.session_id, cols=77, rows=22))
            await b.type("stty size\r")
            await b.wait_text("22 77")
            await b.type("hello kiro\r")
            await b.wait_text("you said: hello kiro")
            await b.type("/quit\r")
            exit_frame = await b.wait_frame(fr.ExitFrame, 5)
            assert exit_frame.code == 0
            await b.close()

        asyncio.run(scenario())


def test_auto_resume_only_where_the_tasks_own_agent_ran(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """TERMINAL_RESUME=auto: a task's session in the task's own folder starts the agent with
    ``--resume`` (the pipeline run's conversation is there); a branch session in a fresh worktree, and
    a task session pushed to another folder because the task's is busy, start without it."""
    kiro = FakeKiro(tmp_path)
    ws = workspace(tmp_path)
    # given: the pipeline ran T-1's agent in the task's folder and removed the worktree on success
    ran = ws.checkout("feature/one", "task-T-1")
    kiro.run_headless(ran.path, "Task: the task's own run")
    ws.remove(ran.path)
    # ... and T-2's pipeline run is still going on in its folder
    busy = ws.checkout("feature/two", "task-T-2")
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, kiro.argv_for, kiro.env, ws=ws)),
    ):

        async def scenario() -> None:
            branch = await Browser.connect(gw.ws_url, browser_token(branch="feature/plain"))
            await branch.open(branch="feature/plain", timeout=10)
            await branch.wait_text(KIRO_PROMPT, 10)
            task = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
            await task.open(task_id="T-1", timeout=10)
            resumed = f"Resumed the previous conversation in {ran.path.resolve()} (2 messages)"
            await task.wait_text(resumed, 10)
            other = await Browser.connect(gw.ws_url, browser_token(task="T-2"))
            await other.open(task_id="T-2", timeout=10)
            await other.wait_text(KIRO_PROMPT, 10)
            for b in (branch, other):
                assert "Resumed" not in b.text and "No previous conversation" not in b.text
                await b.close()
            await task.close()

        asyncio.run(scenario())
    starts = {Path(e["cwd"]).name: e["resume"] for e in kiro.events("start") if e["mode"] == "interactive"}
    assert starts == {
        ran.path.name: True,
        f"{busy.path.name}-2": False,
        next(n for n in starts if n.startswith("term-")): False,
    }
