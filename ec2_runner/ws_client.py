"""The runner's one outbound WebSocket connection to the terminal relay.

``async for ws in connect(url)`` reconnects with backoff; after each (re)connect the runner says
``hello`` with the sessions it still holds, so the relay routes them to the new connection. The
runner authenticates with a short-lived runner token signed with the runner secret (minted again
after a refused handshake): ``RUNNER_SECRET`` on the local stack; in AWS the secret that main.py
reads from Secrets Manager (``RUNNER_SECRET_ARN``) with the instance role. The connection itself is
not IAM-signed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ec2_runner.terminal import SessionManager
from shared import frames as fr
from shared.tokens import mint_runner_token

logger = logging.getLogger(__name__)

RUNNER_TOKEN_TTL = 3600


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
    return urlunsplit(parts._replace(query=query))


def _secret_reader(runner_secret: str | Callable[[], str | None]) -> Callable[[], str | None]:
    return runner_secret if callable(runner_secret) else (lambda: runner_secret)


async def serve_terminals(
    ws_url: str,
    runner_secret: str | Callable[[], str | None],
    sessions: SessionManager,
    runner_id: str,
    stop: asyncio.Event | None = None,
    *,
    max_backoff: float = 30.0,
) -> None:
    """Hold the runner's relay connection until ``stop`` is set, serving ``sessions`` over it.

    ``runner_secret`` is the secret or what reads it (a SecretSource's ``get``): it is read again for
    every token, so a rotated secret is used from the next reconnect on.
    """
    read_secret = _secret_reader(runner_secret)
    stop = stop or asyncio.Event()
    sessions.start()
    stopper = asyncio.get_running_loop().create_task(stop.wait())
    backoff = 0.5
    try:
        while not stop.is_set():
            try:
                # Secrets Manager is a blocking call: off the loop, so the sessions keep flowing
                secret = await asyncio.to_thread(read_secret)
                if not secret:
                    raise RuntimeError("the runner secret is empty")
                url = _with_token(ws_url, mint_runner_token(secret, runner_id, ttl=RUNNER_TOKEN_TTL))
                # websockets retries network errors and 5xx with its own exponential backoff
                async for ws in connect(
                    url, max_size=fr.MAX_MESSAGE_BYTES, open_timeout=10, ping_interval=20
                ):
                    backoff = 0.5
                    logger.info("terminal relay connected (%d sessions held)", len(sessions.held()))
                    await _serve_one(ws, sessions, runner_id, stopper)
                    if stop.is_set():
                        await ws.close()
                        return
                    logger.warning("terminal relay connection lost; reconnecting")
            except (InvalidStatus, InvalidHandshake, OSError, RuntimeError, BotoCoreError, ClientError) as e:
                # a refused handshake (expired token, 403) is not retried by websockets itself; nor is a
                # secret that could not be read
                logger.warning("terminal relay refused the connection (%s); retrying in %.1fs", e, backoff)
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, max_backoff)
    finally:
        stopper.cancel()
        await sessions.shutdown()


async def _serve_one(
    ws: ClientConnection, sessions: SessionManager, runner_id: str, stopper: asyncio.Task
) -> None:
    await ws.send(fr.encode(fr.HelloFrame(runner_id=runner_id, sessions=sessions.held()[:256])))
    sender = asyncio.get_running_loop().create_task(_drain(ws, sessions))
    receiver = asyncio.get_running_loop().create_task(_receive(ws, sessions))
    try:
        await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        receiver.cancel()
        if stopper.done():
            # let the sessions' exit frames out before closing
            await sessions.shutdown()
            try:
                await asyncio.wait_for(_flush_outbox(ws, sessions), 2)
            except (TimeoutError, ConnectionClosed):
                pass
        sender.cancel()


async def _receive(ws: ClientConnection, sessions: SessionManager) -> None:
    try:
        async for message in ws:
            try:
                frame = fr.decode(message, role="to_runner")
            except fr.FrameError as e:
                logger.warning("ignoring a frame from the relay: %s", e)
                continue
            await sessions.handle(frame)
    except ConnectionClosed:
        return


async def _drain(ws: ClientConnection, sessions: SessionManager) -> None:
    while True:
        frame = await sessions.outbox.get()
        try:
            await ws.send(fr.encode(frame))
        except ConnectionClosed:
            # the frame stays in the session's ring; browsers resume from their last seq
            return
        except fr.FrameTooLargeError:
            logger.error("dropping a frame over the size limit (%s)", type(frame).__name__)
        sessions.frame_sent()


async def _flush_outbox(ws: ClientConnection, sessions: SessionManager) -> None:
    while not sessions.outbox.empty():
        await ws.send(fr.encode(sessions.outbox.get_nowait()))


class TerminalService:
    """``serve_terminals`` in its own thread and event loop, for a synchronous runner daemon."""

    def __init__(
        self,
        ws_url: str,
        runner_secret: str | Callable[[], str | None],
        runner_id: str,
        make_sessions: object,
    ) -> None:
        """``make_sessions`` is called inside the service's loop and returns the SessionManager."""
        self.ws_url = ws_url
        self.runner_secret = runner_secret
        self.runner_id = runner_id
        self._make_sessions = make_sessions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.sessions: SessionManager | None = None

    def start(self) -> TerminalService:
        self._thread = threading.Thread(target=self._run, name="terminal-service", daemon=True)
        self._thread.start()
        self._started.wait(10)
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.sessions = self._make_sessions()  # type: ignore[operator]
        self._started.set()
        await serve_terminals(self.ws_url, self.runner_secret, self.sessions, self.runner_id, self._stop)

    def call_soon(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the service's loop, from any thread; False when it is not running."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """End the sessions (browsers get ``exit``), close the connection, join the thread."""
        if self._loop and self._stop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout)
