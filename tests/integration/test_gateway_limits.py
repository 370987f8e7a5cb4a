"""API Gateway's WebSocket limits in the local gateway, and the relay, runner and clients meeting them:
real WebSocket connections through the gateway, a real runner's terminal service over real git."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ec2_runner.ws_client import RelayLinkSettings
from local.deploy import deploy
from shared import aws
from shared import frames as fr
from shared.connections import ConnectionStore
from shared.management_api import Poster
from tests.integration.refine_support import (
    Browser,
    Partition,
    browser_token,
    error_codes,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = pytest.mark.timeout(120)


async def closed_with(ws: Any, timeout: float) -> int | None:
    """Wait for the server to close ``ws``; its close code."""
    try:
        await asyncio.wait_for(ws.wait_closed(), timeout)
    except TimeoutError:
        return None
    return ws.close_code


def test_template_ping_route_is_a_mock_the_gateway_answers_itself(moto_endpoint: str) -> None:
    """template.yaml's ``ping`` route is a MOCK integration with a route response: local.deploy reads
    it as such (no function behind it), so the gateway answers it without calling a handler."""
    spec = deploy(moto_endpoint, "us-east-1", stack_name="limits-spec").websocket
    assert spec is not None
    assert spec.mock_routes == {"ping": '{"action": "pong"}'}
    assert "ping" not in spec.routes


def test_frame_over_32_kb_and_message_over_128_kb_close_with_1009(moto_endpoint: str, table: str) -> None:
    """One frame over 32 KB closes the connection with 1009, as API Gateway does, and so does a
    message over 128 KB sent in small frames; a 100 KB message in 32 KB frames is taken."""
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> tuple[int | None, int | None, str]:
            url = f"{gw.ws_url}?token={browser_token(branch='feature/big')}"
            async with connect(url, max_size=None) as one_frame:
                await one_frame.send(json.dumps({"action": "ping", "pad": "x" * 33_000}))
                frame_code = await closed_with(one_frame, 10)
            async with connect(url, max_size=None) as fragmented:
                await fragmented.send(["x" * 30_000] * 5)  # 150 KB in 30 KB frames
                message_code = await closed_with(fragmented, 10)
            async with connect(url, max_size=None) as fine:
                body = json.dumps({"action": "input", "sessionId": "s", "data": "y" * 100_000})
                await fine.send(fr.utf8_pieces(body, fr.MAX_FRAME_BYTES))
                answer = await asyncio.wait_for(fine.recv(), 20)
            return frame_code, message_code, str(answer)

        frame_code, message_code, answer = asyncio.run(scenario())
        assert frame_code == 1009 and message_code == 1009
        # the relay got it, and refused it for its own reason (an input's data is at most 32 KB)
        assert json.loads(answer)["action"] == "error"


def test_keepalive_alone_keeps_a_client_through_several_idle_timeouts(moto_endpoint: str, table: str) -> None:
    """With a 2-second idle timeout, a client that sends nothing is closed with 1001; one that sends
    only ``ping`` (answered ``pong`` by the MOCK route, no handler called) stays connected through
    four idle timeouts. The gateway's own pings would not have counted. (A ping every 0.4 s leaves
    a loaded machine room to spare.)"""
    limits = {"idle_timeout": 2.0}
    with running_gateway(moto_endpoint, table, limits=limits) as gw:

        async def scenario() -> tuple[int | None, list[str], bool]:
            url = f"{gw.ws_url}?token={browser_token(branch='feature/idle')}"
            quiet = await connect(url, ping_interval=0.2)  # protocol pings are not activity
            kept = await connect(url, ping_interval=None)
            pongs: list[str] = []
            started = time.monotonic()
            while time.monotonic() - started < 8.0:
                await kept.send(json.dumps({"action": "ping"}))
                pongs.append(str(await asyncio.wait_for(kept.recv(), 5)))
                await asyncio.sleep(0.4)
            code = await closed_with(quiet, 5)
            alive = kept.state.name == "OPEN"
            await kept.close()
            return code, pongs, alive

        code, pongs, alive = asyncio.run(scenario())
        assert code == 1001 and alive
        assert {json.loads(p)["action"] for p in pongs} == {"pong"}
        assert gw.mock_replies == len(pongs) and gw.closed_by_limit.get("idle timeout", 0) >= 1


class ResumingBrowser:
    """What the page does about the limits: reconnect when the gateway closes the connection, then
    resume from the last seq; ``seqs`` are every output seq applied, in order. Like the page, it
    numbers its input once across its connections under one writer id, so keystrokes its old
    connection is still relaying and those typed on the new one are written in typed order."""

    def __init__(self, url: str, branch: str) -> None:
        self.url, self.branch = url, branch
        self.writer = secrets.token_urlsafe(16)
        self.typed = 0  # the seq of the last input frame
        self.browser: Browser | None = None
        self.reasm = fr.SeqReassembler()
        self.text = ""
        self.seqs: list[int] = []
        self.reconnects = 0
        self.refusals: list[str | None] = []

    async def start(self) -> None:
        # on a loaded machine the first open (worktree, shell) may outlast the browser's own short
        # maximum duration: open again on a new connection, as the page does
        for _ in range(5):
            self.browser = await Browser.connect(self.url, browser_token(branch=self.branch))
            try:
                opened = await self.browser.open(branch=self.branch)
            except ConnectionClosed:
                continue
            self._take(opened)
            return
        raise AssertionError("the session never opened within the browser's maximum duration")

    def _take(self, frame: Any) -> None:
        if isinstance(frame, fr.OpenedFrame):
            self.text += "".join(self.reasm.start(frame.next_seq))
        elif isinstance(frame, fr.OutputFrame):
            before = self.reasm.last_seq
            self.text += "".join(self.reasm.push(frame.seq, frame.data))
            self.seqs += list(range(before + 1, self.reasm.last_seq + 1))
        elif isinstance(frame, fr.ErrorFrame):
            self.refusals.append(frame.code)

    async def _reconnect(self) -> None:
        self.reconnects += 1
        self.browser = await Browser.connect(self.url, browser_token(branch=self.branch))
        assert self.browser is not None
        sid = fr.session_id_for(branch=self.branch)
        self.browser.session_id = sid
        await self.browser.send(fr.ResumeFrame(session_id=sid, last_seq=self.reasm.last_seq))

    async def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            assert self.browser is not None
            try:
                raw = await asyncio.wait_for(self.browser.ws.recv(), left)
            except TimeoutError:
                return
            except ConnectionClosed:
                await self._reconnect()
                continue
            self._take(fr.decode(raw, role="to_browser"))

    async def type(self, data: str) -> None:
        assert self.browser is not None and self.browser.session_id
        self.typed += 1
        frame = fr.InputFrame(
            session_id=self.browser.session_id, data=data, seq=self.typed, writer=self.writer
        )
        for _ in range(3):
            assert self.browser is not None
            try:
                await self.browser.send(frame)  # sent again after a reconnect: the runner drops a duplicate
                return
            except ConnectionClosed:
                await self._reconnect()


def test_runner_moves_over_at_its_maximum_duration_losing_no_output(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """With a 3-second maximum connection duration, the runner moves to a new connection before
    each mark (at least three times) while a browser keeps typing and resuming after its own
    connection is closed: every command's output arrives, and the output seqs are continuous."""
    limits = {"max_connection_seconds": 3.0, "idle_timeout": 30.0}
    link = RelayLinkSettings(keepalive_seconds=1.0, max_connection_seconds=3.0, move_ahead_seconds=1.5)
    with (
        running_gateway(moto_endpoint, table, limits=limits) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, show_git_status=False), link=link),
    ):

        async def scenario() -> ResumingBrowser:
            client = ResumingBrowser(gw.ws_url, "feature/move-over")
            await client.start()
            for n in range(60):  # ~12 s: four maximum durations
                await client.type(f"echo tick-$(({n}+1000))\r")
                await client.pump(0.2)
            await client.pump(2.0)
            return client

        client = asyncio.run(scenario())
        ticks = [int(m) for m in re.findall(r"tick-(\d{4})\r\n", client.text)]
        missing = sorted(set(range(1000, 1060)) - set(ticks))
        typed = [t for t in missing if f"echo tick-$(({t - 1000}+1000))" in client.text]
        # which side lost a command: its echo came back (the shell had it) or not (its input was lost)
        assert ticks == list(range(1000, 1060)), (
            f"missing {missing}, of which echoed {typed}; refusals {client.refusals}; "
            f"reconnects {client.reconnects}; {client.text[-400:]}"
        )
        assert client.seqs == list(range(client.seqs[0], client.seqs[0] + len(client.seqs)))
        # the runner opened a connection per move (and kept one: never closed by the limit itself)
        assert gw.connections_by_role.get("runner", 0) >= 4
        assert client.reconnects >= 3 and "runner_gone" not in client.refusals


def test_input_a_relay_still_posts_to_the_runner_s_old_connection_after_a_move_is_typed(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """A relay Lambda keeps a session's route for a few seconds (``ROUTE_CACHE_SECONDS``): right
    after the runner moved to a new connection, a relay may still post a keystroke to the old one,
    which the gateway accepts while it is open. The runner keeps reading its old connection until
    those routes ran out, so the keystroke is typed; it used to close the old connection as soon as
    the relay had routed the new one, and the post got 410 (a relay posting a moment earlier lost
    the keystroke)."""
    limits = {"max_connection_seconds": 12.0, "idle_timeout": 30.0}
    link = RelayLinkSettings(keepalive_seconds=1.0, max_connection_seconds=12.0, move_ahead_seconds=6.0)
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    store = ConnectionStore(ddb, table)
    # the relay's own PostToConnection client
    poster = Poster(lambda url: aws.client("apigatewaymanagementapi", region="us-east-1", endpoint_url=url))
    with (
        running_gateway(moto_endpoint, table, limits=limits) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, show_git_status=False), link=link),
    ):

        async def scenario() -> tuple[Browser, bool]:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/old-route"))
            await b.open(branch="feature/old-route")
            assert b.session_id
            await b.type("echo before-$((1+1))\r")
            await b.wait_text("before-2", 10)
            old = store.route(b.session_id)
            (browser,) = store.browsers(b.session_id)
            assert old
            # the move: the session's route turns to the runner's new connection (at ~6 s)
            deadline = time.monotonic() + 15
            while store.route(b.session_id) == old and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert store.route(b.session_id) not in (None, old), "the runner never moved"
            # what a relay with the old route cached posts: the frame stamped as the relay stamps it
            frame = fr.InputFrame(session_id=b.session_id, data="echo cached-$((2+2))\r")
            stamped = frame.model_copy(update={"connection_id": browser, "read_only": False})
            delivered = poster.post(gw.management_url, old, fr.encode(stamped))  # False: 410 Gone
            if delivered:
                await b.wait_text("cached-4", 10)
            return b, delivered

        browser, delivered = asyncio.run(scenario())
    assert delivered, "the old connection was gone (410) right after the move"
    assert "cached-4" in browser.text


def test_large_paste_and_output_burst_arrive_intact_in_order(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """A 100 KB paste (multi-byte characters, split by UTF-8 bytes into input frames) reaches the pty
    byte for byte; a ~590 KB burst of output comes back whole and in order, in runner frames that
    each stay under 32 KB."""
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, show_git_status=False)),
    ):
        paste = ("abc déf 漢字 ✓ " * 10_000).encode()[:102_400].decode(errors="ignore")
        size = len(paste.encode())
        want = hashlib.sha256(paste.encode()).hexdigest()

        async def scenario() -> Browser:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/large"))
            await b.open(branch="feature/large")
            await b.type(f"stty raw -echo; head -c {size} | sha256sum; stty sane\r")
            await asyncio.sleep(0.5)
            pieces = fr.utf8_pieces(paste, fr.INPUT_DATA_BYTES)
            for seq, piece in enumerate(pieces, start=1):
                await b.send(fr.InputFrame(session_id=b.session_id, data=piece, seq=seq))
            await b.wait_text(want, 30)
            await b.type("seq 1 100000; echo burst-$((40+2))\r")
            await b.wait_text("burst-42", 60)
            return b

        b = asyncio.run(scenario())
        assert "\r\n".join(str(i) for i in range(1, 100_001)) in b.text
        assert 0 < gw.max_message_by_role["runner"] <= fr.MAX_FRAME_BYTES


def test_input_without_a_runner_is_no_runner_and_the_session_resumes_when_it_is_back(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """The runner's network drops mid-session: the browser's keystroke gets ``no_runner`` (never
    ``exit``); once the runner is back (its hello routes the session again) a resume reattaches the
    same session and typing works again."""
    with running_gateway(moto_endpoint, table) as gw, Partition(gw.ws_port) as hop:
        link = RelayLinkSettings(keepalive_seconds=60.0)
        with running_runner(gw, lambda: session_manager(tmp_path), ws_url=hop.url(gw.ws_url), link=link):

            async def scenario() -> Browser:
                b = await Browser.connect(gw.ws_url, browser_token(branch="feature/away"))
                await b.open(branch="feature/away")
                await b.type("export MARK=kept-$((20+1)); echo set-$((1+1))\r")
                await b.wait_text("set-2")
                hop.cut()
                await b.wait_for(lambda br: "runner_gone" in error_codes(br), 10)
                await b.type("echo while-away\r")
                await b.wait_for(lambda br: "no_runner" in error_codes(br), 10)
                hop.heal()
                assert b.session_id
                deadline = time.monotonic() + 20
                resumed = 0
                while time.monotonic() < deadline:
                    await b.send(fr.ResumeFrame(session_id=b.session_id, last_seq=b.reasm.last_seq))
                    try:
                        await b.wait_for(
                            lambda br: len([f for f in br.frames if isinstance(f, fr.OpenedFrame)]) > 1, 1
                        )
                        resumed = 1
                        break
                    except TimeoutError:
                        continue
                assert resumed
                await b.type("echo $MARK\r")
                try:
                    await b.wait_text("kept-21\r\n")
                except TimeoutError:
                    raise AssertionError(f"{b.text[-500:]!r} {b.frames[-6:]}") from None
                return b

            b = asyncio.run(scenario())
            assert b.exited is None


def fetch(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_token_url_serves_a_token_that_works_and_refuses_bad_input(moto_endpoint: str, table: str) -> None:
    """``GET /token`` on the page's origin (the demo's ``tokenUrl``) answers ``{"token": ...}`` that
    the gateway's authorizer takes, and refuses bad input with a sentence: no grant, two grants, a
    read-write grant on a protected branch, a bad ``ro`` or ``ttl``, an unknown parameter."""
    with running_gateway(moto_endpoint, table) as gw:
        gw.demo_tokens = True  # the local stack's switch: served for the demo only
        base = gw.page_url + "token"
        status, body = fetch(base + "?branch=feature/demo")
        assert status == 200

        async def use(token: str) -> fr.OpenedFrame | None:
            b = await Browser.connect(gw.ws_url, token)
            await b.send(fr.PingFrame())
            pong = fr.decode(await asyncio.wait_for(b.ws.recv(), 10), role="to_browser")
            await b.close()
            return pong

        assert isinstance(asyncio.run(use(body["token"])), fr.PongFrame)
        assert fetch(base + "?branch=main&ro=1")[0] == 200
        for query, code in [
            ("", 400),
            ("?task=T-1&branch=feature/x", 400),
            ("?branch=main", 403),
            ("?branch=feature/x&ro=2", 400),
            ("?branch=feature/x&ttl=0", 400),
            ("?branch=feature/x&ttl=99999", 400),
            ("?branch=feature/x&user=admin", 400),
            ("?branch=..%2Fetc", 400),
            ("?task=" + "x" * 2000, 400),
        ]:
            status, body = fetch(base + query)
            assert status == code and "token" not in body, (query, body)
            assert body["error"] and len(body["error"]) < 300
