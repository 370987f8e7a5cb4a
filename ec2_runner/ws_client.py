"""The runner's one outbound WebSocket connection to the terminal relay.

It reconnects with backoff; after each (re)connect the runner says ``hello`` with the sessions it
still holds, so the relay routes them to the new connection. It stays inside API Gateway's limits:
a ``ping`` (answered by the gateway's MOCK route, no Lambda) well inside the 10-minute idle
timeout, and before the 2-hour mark a move to a new connection with nothing lost: open it, say
hello, wait for the relay's ``routed``, switch the outbox to it between two frames, and close the
old one once the relay's cached routes to it have run out (its input still read until then). The
runner authenticates with a short-lived runner token signed with the runner secret (minted again
after a refused handshake): ``RUNNER_SECRET`` on the local stack; in AWS the secret that main.py
reads from Secrets Manager (``RUNNER_SECRET_ARN``) with the instance role. The connection itself is
not IAM-signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from ec2_runner.terminal import SessionManager
from shared import frames as fr
from shared.tokens import mint_runner_token

logger = logging.getLogger(__name__)

# what opening a relay connection may raise: a refused handshake (expired token, 403), an
# unreachable relay, a secret that could not be read
_CONNECT_ERRORS = (
    InvalidStatus,
    InvalidHandshake,
    OSError,
    RuntimeError,
    TimeoutError,
    BotoCoreError,
    ClientError,
)

RUNNER_TOKEN_TTL = 3600
# after a move, the old connection is closed this long after the relay's route cache ran out, and at
# the latest this long before its maximum duration
RETIRE_MARGIN_SECONDS = 0.5


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
    return urlunsplit(parts._replace(query=query))


def _secret_reader(runner_secret: str | Callable[[], str | None]) -> Callable[[], str | None]:
    return runner_secret if callable(runner_secret) else (lambda: runner_secret)


class RelayLinkSettings(BaseSettings):
    """How the runner keeps its relay connection inside API Gateway's limits (runner environment)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # a ``ping`` this often (API Gateway closes a connection 10 minutes after its last message)
    keepalive_seconds: float = Field(default=300.0, gt=0, validation_alias="WS_KEEPALIVE_SECONDS")
    # API Gateway's maximum connection duration: the runner moves to a new connection before it
    max_connection_seconds: float = Field(default=7200.0, gt=0, validation_alias="WS_MAX_CONNECTION_SECONDS")
    # how long before that mark the move starts (at most half the duration)
    move_ahead_seconds: float = Field(default=300.0, ge=0, validation_alias="WS_MOVE_AHEAD_SECONDS")

    @property
    def move_after(self) -> float:
        """Seconds after a connection opened that the runner moves to its next one."""
        return max(self.max_connection_seconds - self.move_ahead_seconds, self.max_connection_seconds / 2)


ROUTED_WAIT_SECONDS = 10.0  # how long a new connection's hello waits for the relay's ``routed``
_PING = fr.encode(fr.PingFrame())


@dataclass(eq=False)
class _Connection:
    """One relay connection: its socket, when it opened, and what its receiver has heard."""

    ws: ClientConnection
    opened_at: float
    routed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.ws.state is State.CLOSED or self.ws.state is State.CLOSING

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


class _Link:
    """The connection the outbox drains to. It changes only between two frames (under ``lock``),
    so moving to a new connection splits no frame and loses none: a frame whose send failed is sent
    again on the next connection."""

    def __init__(self) -> None:
        self.current: _Connection | None = None
        self.lock = asyncio.Lock()
        self._ready = asyncio.Event()

    async def use(self, conn: _Connection) -> None:
        async with self.lock:  # no frame is on its way through the old connection after this
            self.current = conn
            self._ready.set()

    def drop(self, conn: _Connection) -> None:
        if self.current is conn:
            self.current = None
            self._ready.clear()

    async def wait(self) -> _Connection:
        while self.current is None:
            await self._ready.wait()
        return self.current


async def serve_terminals(
    ws_url: str,
    runner_secret: str | Callable[[], str | None],
    sessions: SessionManager,
    runner_id: str,
    stop: asyncio.Event | None = None,
    *,
    max_backoff: float = 30.0,
    link: RelayLinkSettings | None = None,
) -> None:
    """Hold the runner's relay connection until ``stop`` is set, serving ``sessions`` over it.

    ``runner_secret`` is the secret or what reads it (a SecretSource's ``get``): it is read again for
    every token, so a rotated secret is used from the next reconnect on. ``link`` says how the
    connection stays inside API Gateway's limits: a ``ping`` every ``keepalive_seconds``, and a move
    to a new connection (open it, say hello, wait for ``routed``, then close the old one) before
    ``max_connection_seconds``.
    """
    client = _RelayClient(
        ws_url, _secret_reader(runner_secret), sessions, runner_id, link or RelayLinkSettings()
    )
    await client.run(stop or asyncio.Event(), max_backoff)


class _RelayClient:
    def __init__(
        self,
        ws_url: str,
        read_secret: Callable[[], str | None],
        sessions: SessionManager,
        runner_id: str,
        settings: RelayLinkSettings,
    ) -> None:
        self.ws_url = ws_url
        self.read_secret = read_secret
        self.sessions = sessions
        self.runner_id = runner_id
        self.settings = settings
        self.link = _Link()
        self.moves = 0
        self._retiring: set[asyncio.Task[None]] = set()  # connections moved from, closing after a grace

    async def run(self, stop: asyncio.Event, max_backoff: float) -> None:
        loop = asyncio.get_running_loop()
        self.sessions.start()
        sender = loop.create_task(self._drain())
        stopper = loop.create_task(stop.wait())
        conn: _Connection | None = None
        try:
            while not stop.is_set():
                if conn is None:
                    conn = await self._connect_with_backoff(stop, max_backoff)
                    if conn is None:
                        return
                    await self._hello(conn)
                    await self.link.use(conn)
                    logger.info("terminal relay connected (%d sessions held)", len(self.sessions.held()))
                ended = conn.tasks[0]  # the receiver: done when the connection closes
                wait = max(0.0, conn.opened_at + self.settings.move_after - loop.time())
                mover = loop.create_task(asyncio.sleep(wait))
                try:
                    await asyncio.wait({ended, stopper, mover}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    mover.cancel()
                if stop.is_set():
                    break
                if ended.done():
                    logger.warning("terminal relay connection lost; reconnecting")
                    self.link.drop(conn)
                    conn.stop()
                    conn = None
                    continue
                conn = await self._move(conn)
            if conn is not None:
                await self._shut_down(conn)
        finally:
            stopper.cancel()
            sender.cancel()
            for retiring in list(self._retiring):
                retiring.cancel()  # each stops its connection as it ends
            if conn is not None:
                conn.stop()
            await self.sessions.shutdown()

    # -- connections ---------------------------------------------------------------------------
    async def _connect(self) -> _Connection:
        # Secrets Manager is a blocking call: off the loop, so the sessions keep flowing
        secret = await asyncio.to_thread(self.read_secret)
        if not secret:
            raise RuntimeError("the runner secret is empty")
        url = _with_token(self.ws_url, mint_runner_token(secret, self.runner_id, ttl=RUNNER_TOKEN_TTL))
        ws = await connect(
            url,
            # API Gateway sends a message of up to 128 KB in frames of at most 32 KB
            max_size=(fr.MAX_MESSAGE_BYTES, fr.MAX_FRAME_BYTES),
            open_timeout=10,
            ping_interval=20,
        )
        conn = _Connection(ws, asyncio.get_running_loop().time())
        loop = asyncio.get_running_loop()
        conn.tasks = [loop.create_task(self._receive(conn)), loop.create_task(self._keepalive(conn))]
        return conn

    async def _connect_with_backoff(self, stop: asyncio.Event, max_backoff: float) -> _Connection | None:
        backoff = 0.5
        while not stop.is_set():
            try:
                return await self._connect()
            except _CONNECT_ERRORS as e:
                # a refused handshake (expired token, 403), an unreachable relay, a secret that
                # could not be read: wait and try again with a fresh token
                logger.warning("terminal relay refused the connection (%s); retrying in %.1fs", e, backoff)
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, max_backoff)
        return None

    async def _hello(self, conn: _Connection) -> None:
        hello = fr.HelloFrame(runner_id=self.runner_id, sessions=self.sessions.held()[:256])
        await conn.ws.send(fr.encode(hello))

    async def _move(self, old: _Connection) -> _Connection:
        """Move to a new connection before the old one reaches API Gateway's maximum duration: open
        it, say hello, wait until the relay routed the sessions there, drain to it, close the old."""
        try:
            new = await self._connect()
        except _CONNECT_ERRORS as e:
            logger.warning("could not open the next relay connection (%s); staying on this one", e)
            old.opened_at = asyncio.get_running_loop().time() - self.settings.move_after + 1.0
            return old
        try:
            await self._hello(new)
            await asyncio.wait_for(new.routed.wait(), ROUTED_WAIT_SECONDS)
        except TimeoutError:
            logger.warning("the relay did not confirm the new connection's hello; moving anyway")
        except ConnectionClosed:
            new.stop()
            return old
        await self.link.use(new)  # from the next frame on, output goes through the new connection
        retiring = asyncio.get_running_loop().create_task(self._retire(old, new))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        self.moves += 1
        logger.info("terminal relay moved to a new connection (move %d)", self.moves)
        return new

    async def _retire(self, old: _Connection, new: _Connection) -> None:
        """Close the connection moved from once the relay's cached routes to it have run out (input
        a relay still posts there meanwhile is read and typed, not lost), or just before its
        maximum duration, whichever comes first; then say hello again on the new one, so a session
        opened through the old one meanwhile is routed there too."""
        loop = asyncio.get_running_loop()
        left = old.opened_at + self.settings.max_connection_seconds - loop.time()
        grace = min(fr.ROUTE_CACHE_SECONDS + RETIRE_MARGIN_SECONDS, max(0.0, left - RETIRE_MARGIN_SECONDS))
        try:
            await asyncio.wait({old.tasks[0]}, timeout=grace)  # its receiver ends if the gateway closes it
            await old.ws.close()
        finally:
            old.stop()
        with contextlib.suppress(ConnectionClosed):
            await self._hello(new)

    async def _shut_down(self, conn: _Connection) -> None:
        # end the sessions and let their exit frames out before closing
        await self.sessions.shutdown()
        deadline = asyncio.get_running_loop().time() + 2
        while not self.sessions.outbox.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        async with self.link.lock:
            await conn.ws.close()
        conn.stop()

    # -- per connection --------------------------------------------------------------------------
    async def _receive(self, conn: _Connection) -> None:
        try:
            async for message in conn.ws:
                try:
                    frame = fr.decode(message, role="to_runner")
                except fr.FrameError as e:
                    logger.warning("ignoring a frame from the relay: %s", e)
                    continue
                if isinstance(frame, fr.RoutedFrame):
                    conn.routed.set()
                elif not isinstance(frame, fr.PongFrame):
                    await self.sessions.handle(frame)
        except ConnectionClosed:
            return

    async def _keepalive(self, conn: _Connection) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.keepalive_seconds)
                async with self.link.lock:
                    await conn.ws.send(_PING)
        except ConnectionClosed:
            return

    # -- the outbox --------------------------------------------------------------------------------
    async def _drain(self) -> None:
        sessions = self.sessions
        while True:
            frame = await sessions.outbox.get()
            try:
                text = fr.encode(frame)  # at most 32 KB: output is split by bytes (frames.output_frames)
            except fr.FrameTooLargeError:
                logger.error("dropping a frame over the size limit (%s)", type(frame).__name__)
                sessions.frame_sent()
                continue
            while True:
                conn = await self.link.wait()
                async with self.link.lock:
                    if conn is not self.link.current:
                        continue  # moved meanwhile: send it through the new one
                    try:
                        await conn.ws.send(text)
                        break
                    except ConnectionClosed:
                        # kept, and sent through the next connection
                        self.link.drop(conn)
            sessions.frame_sent()


class TerminalService:
    """``serve_terminals`` in its own thread and event loop, for a synchronous runner daemon."""

    def __init__(
        self,
        ws_url: str,
        runner_secret: str | Callable[[], str | None],
        runner_id: str,
        make_sessions: object,
        link: RelayLinkSettings | None = None,
    ) -> None:
        """``make_sessions`` is called inside the service's loop and returns the SessionManager;
        ``link``: keepalive and connection-move settings (from the environment by default)."""
        self.link = link
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
        await serve_terminals(
            self.ws_url, self.runner_secret, self.sessions, self.runner_id, self._stop, link=self.link
        )

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
