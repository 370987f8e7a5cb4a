"""Refine terminal limits and abuse: every refusal is explicit, and no grant reaches another session."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import frames as fr
from shared import tokens
from shared.relay import CONTROL_RATE
from tests.integration.refine_support import (
    TOKEN_SECRET,
    Browser,
    browser_token,
    error_codes,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_expired_forged_and_missing_tokens_are_refused_at_connect(moto_endpoint: str, table: str) -> None:
    """$connect refuses: no token 401, expired / forged / garbage 403; nothing gets a connection."""
    with running_gateway(moto_endpoint, table) as gw:

        async def status_of(token: str | None) -> int:
            url = gw.ws_url + (f"?token={token}" if token is not None else "")
            with pytest.raises(InvalidStatus) as err:
                await connect(url)
            return err.value.response.status_code

        async def scenario() -> None:
            expired = tokens.mint(TOKEN_SECRET, sub="u", task="T-1", ttl=1, now=1_000_000)
            forged = tokens.mint("some-other-secret-0123456789abcdef", sub="u", task="T-1")
            assert await status_of(None) == 401
            assert await status_of(expired) == 403
            assert await status_of(forged) == 403
            assert await status_of("garbage.token") == 403
            assert gw.connection_ids == []

        asyncio.run(scenario())


def test_token_for_one_session_cannot_reach_another(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """Two browsers on two sessions see only their own output; a token for A cannot open, type into,
    resize, resume, push or close B, even naming B's session id."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            a = await Browser.connect(gw.ws_url, browser_token(branch="feature/a"))
            b = await Browser.connect(gw.ws_url, browser_token(task="T-2"))
            await a.open(branch="feature/a")
            await b.open(task_id="T-2")
            assert a.session_id != b.session_id
            await a.type("echo only-$((1+1))-for-a\r")
            await b.type("echo only-$((2+2))-for-b\r")
            await a.wait_text("only-2-for-a")
            await b.wait_text("only-4-for-b")
            # A tries B by branch, by task and by session id, with every action that names a session
            assert b.session_id
            attempts = [
                fr.OpenFrame(branch="feature/two"),
                fr.OpenFrame(task_id="T-2"),
                fr.InputFrame(session_id=b.session_id, data="echo pwned-$((3+3))\r"),
                fr.ResizeFrame(session_id=b.session_id, cols=10, rows=10),
                fr.ResumeFrame(session_id=b.session_id, last_seq=0),
                fr.PushFrame(session_id=b.session_id, message="pwned"),
                fr.CloseFrame(session_id=b.session_id),
            ]
            for frame in attempts:
                await a.send(frame)
            await a.wait_for(lambda br: error_codes(br).count("not_granted") == len(attempts))
            await b.type("echo still-$((5+5))\r")
            await b.wait_text("still-10")
            await asyncio.sleep(0.2)
            assert "pwned-6" not in b.text and "only-4" not in a.text and "only-2" not in b.text
            # the resume replayed nothing of B to A, the push and close reached nothing
            assert [type(f) for f in a.frames if not isinstance(f, fr.ErrorFrame)] == [fr.OpenedFrame]
            assert b.exited is None and not any(isinstance(f, fr.PushedFrame) for f in b.frames)
            await a.close()
            await b.close()

        asyncio.run(scenario())


def test_browser_cannot_send_runner_only_actions(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """A browser posing as the runner (output, exit, hello, detach...) is refused and reaches nobody."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            victim = await Browser.connect(gw.ws_url, browser_token(branch="feature/v"))
            await victim.open(branch="feature/v")
            evil = await Browser.connect(gw.ws_url, browser_token(branch="feature/v"))
            sid = victim.session_id
            fakes = [
                {"action": "output", "sessionId": sid, "seq": 999, "data": "FAKE OUTPUT", "to": []},
                {"action": "exit", "sessionId": sid, "code": 0},
                {"action": "hello", "runnerId": "evil", "sessions": [sid]},
                {"action": "detach", "sessionId": sid, "connectionId": "x"},
                {"action": "opened", "sessionId": sid, "branch": "x", "nextSeq": 1},
            ]
            for fake in fakes:
                await evil.send(json.dumps(fake))
            await evil.wait_for(lambda br: error_codes(br).count("forbidden") == len(fakes))
            await victim.type("echo fine-$((7+7))\r")
            await victim.wait_text("fine-14")
            assert "FAKE OUTPUT" not in victim.text and victim.exited is None
            await evil.close()
            await victim.close()

        asyncio.run(scenario())


def test_read_only_browser_watches_but_its_input_is_refused(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            writer = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
            watcher = await Browser.connect(gw.ws_url, browser_token(task="T-1", read_only=True))
            await writer.open(task_id="T-1")
            await watcher.open(task_id="T-1")
            await watcher.type("echo from-$((8+8))-watcher\r")
            await watcher.send(fr.ResizeFrame(session_id=watcher.session_id, cols=20, rows=5))
            await watcher.send(fr.CloseFrame(session_id=watcher.session_id))
            await watcher.wait_for(lambda br: error_codes(br).count("read_only") == 3)
            await writer.type("echo from-$((9+9))-writer\r")
            await watcher.wait_text("from-18-writer")
            await writer.wait_text("from-18-writer")
            assert "from-16-watcher" not in writer.text
            await writer.close()
            await watcher.close()

        asyncio.run(scenario())


def test_input_flood_is_throttled(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """More than WS_INPUT_RATE input frames a second from one connection are refused as throttled, and
    a refused keystroke never reaches the pty: the line the shell runs holds exactly the ones let by."""
    with (
        running_gateway(moto_endpoint, table, WS_INPUT_RATE="5") as gw,
        running_runner(gw, lambda: session_manager(tmp_path)),
    ):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/flood"))
            await b.open(branch="feature/flood")
            await b.wait_text("$ ")
            await b.type("echo A")
            await b.wait_text("echo A")
            start, before = b.text.index("echo A") + len("echo A"), error_codes(b).count("throttled")

            def echoed(br: Browser) -> int:
                return br.text.count("x", start)

            def throttled(br: Browser) -> int:
                return error_codes(br).count("throttled") - before

            # when
            flood = 30
            sent_from = time.monotonic()
            for _ in range(flood):
                await b.type("x")
            windows = int(time.monotonic() - sent_from) + 2  # one-second windows the flood touched
            # then: each x is either refused or echoed by the pty's shell, never both
            await b.wait_for(lambda br: echoed(br) + throttled(br) >= flood, 10)
            throttled_x = throttled(b)
            assert 0 < throttled_x and flood - throttled_x <= windows * 5  # 5 let by per window
            # Enter (once a new second lets it by) runs the line: it holds exactly the x's let by
            ran = re.compile(r"\r(Ax*)\r\n")
            deadline = time.monotonic() + 10
            while (line := ran.search(b.text, start)) is None:
                assert time.monotonic() < deadline, "the line never ran"
                refused = throttled(b)
                await b.type("\r")
                await b.wait_for(
                    lambda br, n=refused: throttled(br) > n or ran.search(br.text, start) is not None
                )
            assert line.group(1).count("x") == flood - throttled_x
            await b.close()

        asyncio.run(scenario())


def test_open_and_resume_floods_are_throttled(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """``open`` and ``resume`` make the runner start or replay a session (a resume from 0 replays the
    whole ring): past CONTROL_RATE per window from one connection they are refused as throttled and
    never reach the runner (it answers every one it gets with ``opened``)."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/replay"))
            await b.open(branch="feature/replay")
            sent = 1 + 3 * CONTROL_RATE
            # when
            for _ in range(sent - 1):
                await b.send(fr.ResumeFrame(session_id=b.session_id, last_seq=0))
            # then: every frame got its answer, and the burst (well under a window) spans at most two
            await b.wait_for(lambda br: error_codes(br).count("throttled") + opened_count(br) == sent, 15)
            assert opened_count(b) <= 2 * CONTROL_RATE
            assert error_codes(b).count("throttled") >= sent - 2 * CONTROL_RATE
            await b.close()

        asyncio.run(scenario())


def opened_count(browser: Browser) -> int:
    return sum(isinstance(f, fr.OpenedFrame) for f in browser.frames)


def test_message_over_128_kb_closes_with_1009(moto_endpoint: str, table: str) -> None:
    """As API Gateway does: a message over 128 KB closes the connection with 1009 (message too big)."""
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/big"))
            await b.send(json.dumps({"action": "input", "sessionId": "s", "data": "x" * (130 * 1024)}))
            with pytest.raises(ConnectionClosed) as closed:
                await b.ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

        asyncio.run(scenario())
