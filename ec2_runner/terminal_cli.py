"""``aipm terminal`` and ``aipm token``: attach the user's own terminal to a Refine session, mint tokens.

``attach`` puts the local terminal in raw mode, forwards keystrokes as ``input`` frames and window
changes (SIGWINCH) as ``resize`` frames, writes output in ``seq`` order, and on a dropped connection
reconnects and resumes from the last ``seq``. ``Ctrl-]`` detaches (the session keeps running for its
grace period).
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
        payload = token.split(".")[0]
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


@dataclass
class _State:
    reasm: fr.SeqReassembler = field(default_factory=fr.SeqReassembler)
    session_id: str | None = None


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
                    taskId=grant.get("task"), branch=grant.get("branch"), cols=cols, rows=rows
                )
            else:
                opener = fr.ResumeFrame(sessionId=state.session_id, lastSeq=state.reasm.last_seq)
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
    """Shuttle frames until the session exits (its code), the user detaches (0) or the socket drops."""

    async def send_keys() -> int:
        typed = 0
        while True:
            data = await keys.get()
            if DETACH_KEY in data:
                say("detached; the session keeps running for its grace period")
                return 0
            if state.session_id:
                typed += 1  # numbered per connection: the runner writes keystrokes in typed order
                frame = fr.InputFrame(
                    sessionId=state.session_id, data=data.decode("utf-8", "replace"), seq=typed
                )
                await ws.send(fr.encode(frame))

    async def send_resizes() -> None:
        while True:
            await winch.wait()
            winch.clear()
            if state.session_id:
                cols, rows = _size()
                await ws.send(fr.encode(fr.ResizeFrame(sessionId=state.session_id, cols=cols, rows=rows)))

    async def receive() -> int | None:
        async for raw in ws:
            try:
                frame = fr.decode(raw, role="runner")
            except fr.FrameError:
                continue
            if isinstance(frame, fr.OpenedFrame):
                state.session_id = frame.sessionId
                chunks = state.reasm.start(frame.nextSeq)
            elif isinstance(frame, fr.OutputFrame):
                chunks = state.reasm.push(frame.seq, frame.data)
            elif isinstance(frame, fr.ExitFrame):
                say(f"session ended (code {frame.code}{': ' + frame.reason if frame.reason else ''})")
                return frame.code
            elif isinstance(frame, fr.ErrorFrame):
                if frame.code in ("not_granted", "no_runner", "bad_target", "busy", "no_session"):
                    say(frame.message)
                    return 1
                say(frame.message)
                continue
            elif isinstance(frame, fr.PushedFrame):
                say(f"pushed {frame.commitSha}" if frame.commitSha else "nothing to commit")
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
        for task in tasks:
            task.cancel()
