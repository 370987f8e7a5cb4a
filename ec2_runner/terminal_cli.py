"""``aipm terminal`` and ``aipm token``: attach the user's own terminal to a Refine session, mint tokens.

``attach`` puts the local terminal in raw mode, forwards keystrokes as ``input`` frames and window
changes (SIGWINCH) as ``resize`` frames, writes output in ``seq`` order, and on a dropped connection
reconnects and resumes from the last ``seq``; when the session's runner goes away (``runner_gone``) it
keeps resuming until the runner is back. ``Ctrl-]`` detaches (the session keeps running for its
grace period) and ``Ctrl-\\`` pushes (commits the session's work and pushes it to its branch, as the
page's push button does); the keys are shown when it attaches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import frames as fr
from shared import tokens

DETACH_KEY = b"\x1d"  # Ctrl-]
PUSH_KEY = b"\x1c"  # Ctrl-\ (raw mode: no SIGQUIT)
KEYS_HELP = "keys: Ctrl-\\ push (commit the session's work and push it to its branch), Ctrl-] detach"


def mint_token(
    task_id: str | None = None,
    branch: str | None = None,
    *,
    read_only: bool = False,
    ttl: int = tokens.DEFAULT_TTL,
    secret: str,
    user: str | None = None,
) -> str:
    """A browser token for one task or branch, exactly as the backend mints it."""
    return tokens.mint(
        secret, sub=user or getpass.getuser(), task=task_id, branch=branch, read_only=read_only, ttl=ttl
    )


def token_grant(token: str) -> dict[str, Any]:
    """The (unverified) claims of a token: enough for a client to know what to open."""
    try:
        payload = token.split(".")[1]  # a JWT: header.payload.signature
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, IndexError) as e:
        raise tokens.TokenMalformedError("not a token") from e


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


REATTACH_SECONDS = 60.0  # how long a session whose runner went away is waited for
FATAL_AT_OPEN = ("not_granted", "no_runner", "bad_target", "busy", "no_session")


@dataclass
class _State:
    reasm: fr.SeqReassembler = field(default_factory=fr.SeqReassembler)
    session_id: str | None = None
    # while the session's runner is away: until when to keep resuming, and the next retry's delay
    reattach_until: float | None = None
    reattach_delay: float = 0.5
    held: list[str] = field(default_factory=list)  # keystrokes typed while reattaching

    @property
    def reattaching(self) -> bool:
        return self.reattach_until is not None

    def start_reattach(self, now: float) -> None:
        if self.reattach_until is None:
            self.reattach_until = now + REATTACH_SECONDS
            self.reattach_delay = 0.5


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


def attach(ws_url: str, token: str, *, stdin_fd: int | None = None, out: Any = None) -> int:
    """Attach this terminal to the session the token grants; returns the session's exit code
    (0 on detach, 1 when refused)."""
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stream = out or sys.stdout.buffer
    with _raw(fd):
        return asyncio.run(_attach(ws_url, token, fd, stream))


async def _attach(ws_url: str, token: str, fd: int, out: Any) -> int:
    grant = token_grant(token)
    loop = asyncio.get_running_loop()
    state = _State()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    winch = asyncio.Event()

    def on_key() -> None:
        data = os.read(fd, 4096)
        if not data:  # stdin closed: detach
            loop.remove_reader(fd)
            data = DETACH_KEY
        keys.put_nowait(data)

    loop.add_reader(fd, on_key)
    with contextlib.suppress(ValueError, RuntimeError):
        loop.add_signal_handler(signal.SIGWINCH, winch.set)

    def say(text: str) -> None:
        out.write(f"\r\n[aipm] {text}\r\n".encode())
        out.flush()

    url = f"{ws_url}{'&' if '?' in ws_url else '?'}{urlencode({'token': token})}"
    attempts = 0
    try:
        while True:
            try:
                ws = await connect(url, max_size=fr.MAX_MESSAGE_BYTES, open_timeout=10)
            except InvalidStatus as e:
                say(f"connection refused ({e.response.status_code}): the token may have expired")
                return 1
            except OSError as e:
                attempts += 1
                if attempts > 5:
                    say(f"cannot reach the terminal relay: {e}")
                    return 1
                await asyncio.sleep(min(0.5 * 2**attempts, 5))
                continue
            attempts = 0
            cols, rows = _size()
            opener: fr.OpenFrame | fr.ResumeFrame
            if state.session_id is None:
                opener = fr.OpenFrame(
                    task_id=grant.get("task"), branch=grant.get("branch"), cols=cols, rows=rows
                )
            else:
                state.start_reattach(loop.time())
                opener = fr.ResumeFrame(session_id=state.session_id, last_seq=state.reasm.last_seq)
            await ws.send(fr.encode(opener))
            try:
                code = await _pump(ws, keys, winch, state, out, say)
            except ConnectionClosed:
                say("connection lost; reconnecting")
                continue
            finally:
                await ws.close()
            if code is not None:
                return code
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signal.SIGWINCH)


async def _pump(
    ws: ClientConnection, keys: asyncio.Queue[bytes], winch: asyncio.Event, state: _State, out: Any, say: Any
) -> int | None:
    """Shuttle frames until the session exits (its code), the user detaches (0) or the socket drops.

    When the session's runner goes away (``runner_gone``), keep resuming from the last ``seq`` until
    it is back (``opened``: the runner replays what was missed), holding keystrokes meanwhile."""
    loop = asyncio.get_running_loop()
    typed = 0  # input numbered per connection: the runner writes keystrokes in typed order
    later: set[asyncio.Task[None]] = set()

    async def send_input(text: str) -> None:
        nonlocal typed
        assert state.session_id
        typed += 1
        await ws.send(fr.encode(fr.InputFrame(session_id=state.session_id, data=text, seq=typed)))

    async def send_resize() -> None:
        if state.session_id:
            cols, rows = _size()
            await ws.send(fr.encode(fr.ResizeFrame(session_id=state.session_id, cols=cols, rows=rows)))

    async def resume_after(delay: float) -> None:
        await asyncio.sleep(delay)
        if state.reattaching and state.session_id:
            await ws.send(
                fr.encode(fr.ResumeFrame(session_id=state.session_id, last_seq=state.reasm.last_seq))
            )

    def retry_resume() -> int | None:
        state.start_reattach(loop.time())
        assert state.reattach_until is not None
        if loop.time() > state.reattach_until:
            say("the runner did not come back with this session; it has ended")
            return 1
        task = loop.create_task(resume_after(state.reattach_delay))
        later.add(task)
        task.add_done_callback(later.discard)
        state.reattach_delay = min(state.reattach_delay * 2, 5.0)
        return None

    async def send_keys() -> int:
        while True:
            data = await keys.get()
            if DETACH_KEY in data:
                say("detached; the session keeps running for its grace period")
                return 0
            if PUSH_KEY in data:
                before, _, after = data.partition(PUSH_KEY)
                if before and state.session_id and not state.reattaching:
                    await send_input(before.decode("utf-8", "replace"))
                if state.session_id and not state.reattaching:
                    say("pushing...")
                    await ws.send(fr.encode(fr.PushFrame(session_id=state.session_id)))
                else:
                    say("not attached to a session right now; push again once it is back")
                if not after:
                    continue
                data = after
            text = data.decode("utf-8", "replace")
            if state.reattaching:
                if sum(map(len, state.held)) < fr.MAX_FRAME_BYTES:
                    state.held.append(text)  # typed while the runner is away: sent once it is back
            elif state.session_id:
                await send_input(text)

    async def send_resizes() -> None:
        while True:
            await winch.wait()
            winch.clear()
            if not state.reattaching:
                await send_resize()

    async def receive() -> int | None:
        async for raw in ws:
            try:
                frame = fr.decode(raw, role="runner")
            except fr.FrameError:
                continue
            if isinstance(frame, fr.OpenedFrame):
                if state.session_id is None:
                    say(KEYS_HELP)
                state.session_id = frame.session_id
                chunks = state.reasm.start(frame.next_seq)
                if state.reattaching:
                    state.reattach_until = None
                    say("reattached")
                    held, state.held = state.held, []
                    await send_resize()
                    for text in held:
                        await send_input(text)
            elif isinstance(frame, fr.OutputFrame):
                chunks = state.reasm.push(frame.seq, frame.data)
            elif isinstance(frame, fr.ExitFrame):
                say(f"session ended (code {frame.code}{': ' + frame.reason if frame.reason else ''})")
                return frame.code
            elif isinstance(frame, fr.ErrorFrame):
                if frame.code == "runner_gone" or (frame.code == "no_runner" and state.reattaching):
                    if frame.code == "runner_gone":
                        say("the runner went away; reattaching when it is back")
                    code = retry_resume()
                    if code is not None:
                        return code
                    continue
                say(frame.message)
                if frame.code in FATAL_AT_OPEN:
                    return 1
                continue
            elif isinstance(frame, fr.PushedFrame):
                say(f"pushed {frame.commit_sha}" if frame.commit_sha else "nothing to commit")
                continue
            else:
                continue
            if chunks:
                out.write("".join(chunks).encode())
                out.flush()
        raise ConnectionClosed(None, None)

    tasks = [asyncio.ensure_future(c) for c in (send_keys(), send_resizes(), receive())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in [*tasks, *later]:
            task.cancel()
