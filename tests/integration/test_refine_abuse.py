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
from shared.relay import CONTROL_RATE, CONTROL_WINDOW_SECONDS, SESSION_REPLAY_RATE, USER_REPLAY_RATE
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
            flood = 40
            sent_from = time.monotonic()
            for _ in range(flood):
                await b.type("x")
            # then: each x is either refused or echoed by the pty's shell, never both
            await b.wait_for(lambda br: echoed(br) + throttled(br) >= flood, 10)
            # the one-second windows the relay's handling of the flood can have touched: from the first
            # send to the last answer (under load the relay handles frames well after they were sent)
            windows = int(time.monotonic() - sent_from) + 2
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


# -- hostile clients (issue 12, item 6): no crash, a clean refusal, other sessions unaffected -------
def test_a_genuine_token_with_junk_or_padding_in_its_signature_is_refused_at_connect(
    moto_endpoint: str, table: str
) -> None:
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            genuine = browser_token(branch="feature/sig")
            head, sig = genuine.rsplit(".", 1)
            for variant in (f"{genuine}=", f"{head}.{sig[:8]}={sig[8:]}", f"{head}.{sig[:8]}!{sig[8:]}"):
                with pytest.raises(InvalidStatus) as err:
                    await connect(f"{gw.ws_url}?token={variant}")
                assert err.value.response.status_code == 403
            assert gw.connection_ids == []
            b = await Browser.connect(gw.ws_url, genuine)  # the canonical spelling still gets in
            await b.close()

        asyncio.run(scenario())


def expiring_token(seconds: float, **grant: object) -> tuple[str, float]:
    """A genuine token whose ``exp`` passes beyond the clock skew ``seconds`` from now, and when."""
    now = time.time()
    ttl = 60
    issued = now - ttl - tokens.CLOCK_SKEW + seconds
    token = tokens.mint(TOKEN_SECRET, sub="tester", ttl=ttl, now=issued, **grant)  # type: ignore[arg-type]
    return token, int(issued) + ttl + tokens.CLOCK_SKEW


def test_input_on_a_connection_whose_token_expired_since_is_refused(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """The token was valid at $connect; once its exp is past (beyond the skew) every frame of that
    connection is refused as ``token_expired`` (so the page can renew), none reaches the pty, and the
    connection gets no more output; a writer with a fresh token goes on as before."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            # the session (a clone and a worktree: slow on a loaded machine) opens first, so the
            # doomed connection's few seconds go to attaching and typing
            writer = await Browser.connect(gw.ws_url, browser_token(branch="feature/exp"))
            await writer.open(branch="feature/exp")
            # 10 s for the doomed connection to attach and echo; its waits, like the writer's, allow
            # for a loaded machine (each returns as soon as it sees what it waits for)
            token, dead_at = expiring_token(10, branch="feature/exp")
            doomed = await Browser.connect(gw.ws_url, token)
            await doomed.open(branch="feature/exp")
            await doomed.type("echo before-$((1+1))\r")
            await doomed.wait_text("before-2", timeout=max(dead_at - time.time(), 0.1))
            while time.time() <= dead_at + 0.5:  # wait for the expiry itself, not a timing
                await asyncio.sleep(0.2)
            # when
            await doomed.type("echo after-$((2+2))\r")
            await doomed.send(fr.ResizeFrame(session_id=doomed.session_id, cols=20, rows=5))
            await doomed.send(fr.ResumeFrame(session_id=doomed.session_id, last_seq=0))
            # then
            await doomed.wait_for(lambda br: error_codes(br).count("token_expired") == 3, timeout=15)
            refusal = next(f for f in doomed.frames if isinstance(f, fr.ErrorFrame))
            assert "expired" in refusal.message and "token" in refusal.message
            await writer.type("echo writer-$((3+3))\r")
            await writer.wait_text("writer-6", timeout=15)
            await asyncio.sleep(0.3)
            assert "after-4" not in writer.text and "after-4" not in doomed.text
            assert "writer-6" not in doomed.text  # the runner no longer sends it output
            await doomed.close()
            await writer.close()

        asyncio.run(scenario())


def user_token(sub: str, read_only: bool = False, **grant: object) -> str:
    return tokens.mint(TOKEN_SECRET, sub=sub, read_only=read_only, ttl=300, **grant)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_replays_are_bounded_per_session_whatever_the_number_of_connections(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """Eight read-only connections sending five ``resume {lastSeq: 0}`` each (the issue's attack):
    each connection stays within its own budget, but the session's budget lets at most
    SESSION_REPLAY_RATE replays a window reach the runner; the rest are ``throttled``. Another user's
    session on the same runner echoes and resumes as before."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            owner = await Browser.connect(gw.ws_url, user_token("owner", branch="feature/ring"))
            await owner.open(branch="feature/ring")
            other = await Browser.connect(gw.ws_url, user_token("bystander", branch="feature/calm"))
            await other.open(branch="feature/calm")
            watchers = [
                await Browser.connect(gw.ws_url, user_token(f"watcher-{i}", True, branch="feature/ring"))
                for i in range(8)
            ]
            assert owner.session_id
            # when
            for _ in range(5):
                for w in watchers:
                    await w.send(fr.ResumeFrame(session_id=owner.session_id, last_seq=0))
            # then: every resume got its answer, and the burst (well under a window) spans at most two
            for w in watchers:
                await w.wait_for(lambda br: error_codes(br).count("throttled") + opened_count(br) == 5, 15)
            replayed = sum(opened_count(w) for w in watchers)
            assert replayed <= 2 * SESSION_REPLAY_RATE
            assert sum(error_codes(w).count("throttled") for w in watchers) == 40 - replayed
            throttled = next(f for w in watchers for f in w.frames if getattr(f, "code", None) == "throttled")
            assert "session" in throttled.message
            await other.type("echo calm-$((4+5))\r")
            await other.wait_text("calm-9")
            await other.send(fr.ResumeFrame(session_id=other.session_id, last_seq=0))
            await other.wait_for(lambda br: opened_count(br) == 2)
            assert "throttled" not in error_codes(other)
            for b in [owner, other, *watchers]:
                await b.close()

        asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_replays_are_bounded_per_user_across_sessions(moto_endpoint: str, table: str) -> None:
    """One user on several sessions, each connection and session within its own budget: past
    USER_REPLAY_RATE opens and resumes a window from that user, the rest are ``throttled``, before
    any reaches a runner; another user is not. (No runner holds these sessions: a resume the budgets
    let by is answered ``no_runner`` by the relay itself, so what is counted is the relay's decision.)"""
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            per_session = min(SESSION_REPLAY_RATE, CONTROL_RATE)
            sessions = 2 * USER_REPLAY_RATE // per_session + 1
            branches = [f"feature/u{i}" for i in range(sessions)]
            mine = [await Browser.connect(gw.ws_url, user_token("greedy", branch=br)) for br in branches]
            # when
            sent_from = time.monotonic()
            for b, branch in zip(mine, branches, strict=True):
                for _ in range(per_session):
                    await b.send(fr.ResumeFrame(session_id=fr.session_id_for(branch=branch), last_seq=0))
            # then: every resume answered; the user's budget held in each window the relay's handling
            # of the burst touched (well under one when the machine is idle, more on a loaded one)
            for b in mine:
                await b.wait_for(lambda br: len(error_codes(br)) == per_session, 40)
            windows = int((time.monotonic() - sent_from) / CONTROL_WINDOW_SECONDS) + 2
            let_by = sum(error_codes(b).count("no_runner") for b in mine)
            throttled = [f for b in mine for f in b.frames if getattr(f, "code", "") == "throttled"]
            assert sessions * per_session > 2 * USER_REPLAY_RATE
            assert 0 < len(throttled) and let_by <= windows * USER_REPLAY_RATE
            assert len(throttled) == sessions * per_session - let_by
            assert all("from this user" in f.message for f in throttled)
            calm = await Browser.connect(gw.ws_url, user_token("calm", branch="feature/u0"))
            await calm.send(fr.ResumeFrame(session_id=fr.session_id_for(branch="feature/u0"), last_seq=0))
            await calm.wait_for(lambda br: error_codes(br) == ["no_runner"])
            for b in [*mine, calm]:
                await b.close()

        asyncio.run(scenario())


GRANTED = fr.session_id_for(branch="feature/key")


def deep(depth: int) -> str:
    return '{"action":"input","sessionId":"s","data":"x","k":' + "[" * depth + "]" * depth + "}"


def test_deeply_nested_json_is_refused_as_malformed_and_the_connection_lives_on(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """JSON nested 1,000 (or 16,000: as deep as API Gateway's 32 KB frame allows) levels deep: a short
    ``malformed`` refusal, never a RecursionError nor a 1011 close; the same connection then works as
    before."""
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/deep"))
            await b.open(branch="feature/deep")
            bodies = [deep(1000), deep(16_000), "[" * 1000, '{"action":' * 1000]
            assert max(len(body.encode()) for body in bodies) <= fr.MAX_FRAME_BYTES
            for body in bodies:
                await b.send(body)
            await b.wait_for(lambda br: error_codes(br).count("malformed") == len(bodies))
            assert all(len(f.message) <= 200 for f in b.frames if isinstance(f, fr.ErrorFrame))
            await b.type("echo alive-$((6+6))\r")
            await b.wait_text("alive-12")
            await b.close()

        asyncio.run(scenario())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"action":"input","sessionId":"s","data":"x","' + "k" * 10240 + '":1}', id="10 KB key"),
        pytest.param('{"action":"' + "k" * 10240 + '"}', id="10 KB action"),
        pytest.param('{"action":"input","' + "k" * 10240 + '":1,"sessionId":"s"}', id="key before fields"),
        pytest.param(
            '{"action":"resize","sessionId":"s","cols":"' + "9" * 10240 + '","rows":1}', id="10 KB int"
        ),
        pytest.param('{"action":"input","sessionId":"' + "s" * 10240 + '","data":"x"}', id="10 KB session"),
        pytest.param(
            '{"action":"input","sessionId":"' + GRANTED + '","data":"\\ud800"}',
            id="lone surrogate",
        ),
        pytest.param("{" + "\x00" * 10240, id="10 KB of NULs"),
    ],
)
def test_a_hostile_field_gets_a_short_safe_refusal(moto_endpoint: str, table: str, body: str) -> None:
    """Whatever the input, the refusal is one short error frame that echoes no more than a few of its
    characters; never "Internal server error"."""
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/key"))
            await b.send(body)
            raw = await asyncio.wait_for(b.ws.recv(), 15)  # a loaded machine: the answer, however late
            assert isinstance(raw, str) and len(raw) <= 400, raw[:400]
            frame = fr.decode(raw, role="runner")  # an error frame, not {"message": "Internal server error"}
            assert isinstance(frame, fr.ErrorFrame) and frame.code in ("malformed", "not_granted")
            for run in ("k" * 24, "9" * 24, "s" * 24):
                assert run not in frame.message
            await b.close()

        asyncio.run(scenario())
