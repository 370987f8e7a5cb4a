"""Refine terminal end to end: browser -> local gateway -> real relay handlers -> runner -> pty -> back."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from shared import frames as fr
from tests.integration.refine_support import (
    RUNNER_SECRET,
    Browser,
    browser_token,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_keystrokes_echo_through_the_relay_and_pty(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """What a user types in the browser reaches the agent's pty and its echo comes back, in order."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/echo"))
            opened = await b.open(branch="feature/echo")
            assert opened.branch == "feature/echo" and opened.next_seq == 1
            await b.wait_text("git status")
            await b.type("echo hello-$((40+2))\r")
            await b.wait_text("hello-42")
            # latency of one keystroke's echo, measured (printed, not asserted)
            samples = []
            for ch in "abcdefghijklmnopqrst":
                before = len(b.text)
                t0 = time.perf_counter()
                await b.type(ch)
                await b.wait_for(lambda br, ch=ch, before=before: ch in br.text[before:], 5)
                samples.append((time.perf_counter() - t0) * 1000)
            print(
                f"\nterminal echo latency via the local gateway: p50 {statistics.median(samples):.1f} ms, "
                f"max {max(samples):.1f} ms over {len(samples)} keystrokes"
            )
            await b.close()

        asyncio.run(scenario())


def test_a_rotated_runner_secret_is_read_again_on_the_next_connect(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """The runner reads its secret for every token it mints: after a rotation (here: the first read still
    gives the old secret, which the relay refuses), the next connect uses the new one, no restart."""
    reads: list[str] = []

    def rotating_secret() -> str:
        reads.append("read")
        return "the-secret-before-rotation" if len(reads) == 1 else RUNNER_SECRET

    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path), secret=rotating_secret),
    ):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/rotated"))
            opened = await b.open(branch="feature/rotated")
            assert opened.branch == "feature/rotated"
            await b.close()

        asyncio.run(scenario())
    assert len(reads) >= 2


def test_keystrokes_arriving_out_of_order_are_written_in_typed_order(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """API Gateway may deliver a connection's frames through concurrent invocations: the runner writes
    them by their seq, and a keystroke the relay never delivers holds the rest back only briefly."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/order"))
            await b.open(branch="feature/order")
            await b.wait_text("git status")
            sid = b.session_id
            assert sid
            for seq, data in ((3, "3"), (2, "2"), (1, "echo ordered-1")):
                await b.send(fr.InputFrame(session_id=sid, data=data, seq=seq))
            await b.send(fr.InputFrame(session_id=sid, data="\r", seq=4))
            await b.wait_text("ordered-123")
            # seq 5 never arrives (refused by the relay, say): 6 and 7 still get through
            await b.send(fr.InputFrame(session_id=sid, data="echo gap-", seq=6))
            await b.send(fr.InputFrame(session_id=sid, data="ok\r", seq=7))
            await b.wait_text("gap-ok", timeout=5)
            await b.close()

        asyncio.run(scenario())


def test_resize_reaches_the_pty(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """A resize frame changes the pty's window size (``stty size`` sees it)."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/resize"))
            await b.open(branch="feature/resize", cols=90, rows=30)
            await b.type("stty size\r")
            await b.wait_text("30 90")
            await b.send(fr.ResizeFrame(session_id=b.session_id, cols=132, rows=43))
            await b.type("stty size\r")
            await b.wait_text("43 132")
            await b.close()

        asyncio.run(scenario())
