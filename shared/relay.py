"""The WebSocket relay behind API Gateway: where each frame goes.

Browser frames go to the runner holding their session (starting one on ``open``); runner frames go
to the browser connections they name in ``to``. Identity (role, grant, read-only) comes with every
event (``shared.identity``), so most frames need no read; the connections and routes live in the
connections table (``shared.connections``), input and open/resume budgets in ``shared.ratelimit``,
and posting in ``shared.management_api``.

Hostile clients meet bounds, not crashes: a connection whose token has expired since ``$connect``
has every frame refused (``token_expired``) and is detached from its session; open/resume (each may
replay the whole ring) are budgeted per connection, per session and per user, so many connections
cannot multiply the replays (``throttled``); and every refusal is a short ``error`` frame whatever
the input (``shared.frames`` bounds depth and quotes no more than a few characters). A
``GoneException`` only ever deletes the connection id that was posted to.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from shared import aws
from shared import frames as fr
from shared.connections import ConnectionStore
from shared.identity import Identity
from shared.management_api import Poster, management_endpoint
from shared.ratelimit import RateLimiter
from shared.ws_config import WsSettings

logger = logging.getLogger(__name__)

# open / resume per connection and window: each makes the runner start a session or replay its ring
# (a resume from seq 0 replays up to the whole 8 MB), so they get a far smaller budget than keystrokes
CONTROL_RATE = 5
CONTROL_WINDOW_SECONDS = 10.0
# and per session and per user in the same window, so many connections cannot multiply the replays:
# at most this many rings replayed a window for one session (the page's open after a reload is one)
SESSION_REPLAY_RATE = 6
USER_REPLAY_RATE = 12
# what a refusal's message may hold (an ErrorFrame allows more; a refusal never needs it)
MAX_REFUSAL_CHARS = 300
TOKEN_EXPIRED = (
    "this connection's token has expired: its frames are refused from now on; connect again with a "
    "fresh token"
)


class Relay:
    """What ``$connect``, ``$disconnect`` and ``$default`` do; their handlers call ``on_connect``,
    ``on_disconnect`` and ``on_message`` with the event and return the answer."""

    def __init__(
        self,
        store: ConnectionStore,
        poster: Poster,
        limiter: RateLimiter,
        *,
        input_rate: int = 50,
        control_rate: int = CONTROL_RATE,
        control_window: float = CONTROL_WINDOW_SECONDS,
        session_replay_rate: int = SESSION_REPLAY_RATE,
        user_replay_rate: int = USER_REPLAY_RATE,
        management_endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.poster = poster
        self.limiter = limiter
        self.management_endpoint = management_endpoint
        self.input_rate = input_rate
        self.control_rate = control_rate
        self.control_window = control_window
        self.session_replay_rate = session_replay_rate
        self.user_replay_rate = user_replay_rate
        self._clock = clock
        self._wall_clock = wall_clock
        # session -> (runner connection, when read): a warm instance skips the route read per
        # keystroke; a stale entry shows itself as a GoneException and is read again
        self._routes: dict[str, tuple[str, float]] = {}

    # the three routes, as API Gateway calls them ------------------------------------------------
    def on_connect(self, event: APIGatewayWebSocketEvent) -> dict[str, int]:
        """``$connect`` (after the authorizer allowed it): record the connection, or 403."""
        ident = Identity.from_event(event)
        try:
            self.connect(ident)
        except PermissionError:
            logger.warning("connection without an authorised role refused", extra=ident.log_keys())
            return {"statusCode": 403}
        logger.info("connected", extra=ident.log_keys())
        return {"statusCode": 200}

    def on_disconnect(self, event: APIGatewayWebSocketEvent) -> dict[str, int]:
        """``$disconnect``: forget the connection and tell whoever it leaves behind."""
        ident = Identity.from_event(event)
        self.disconnect(ident, self._endpoint(event))
        logger.info("disconnected", extra=ident.log_keys())
        return {"statusCode": 200}

    def on_message(self, event: APIGatewayWebSocketEvent) -> dict[str, int]:
        """``$default``: relay one frame, or 403 from a connection without an authorised role."""
        ident = Identity.from_event(event)
        try:
            self.message(ident, event.body, self._endpoint(event))
        except PermissionError:
            logger.warning("frame from a connection without an authorised role", extra=ident.log_keys())
            return {"statusCode": 403}
        return {"statusCode": 200}

    def _endpoint(self, event: APIGatewayWebSocketEvent) -> str:
        return management_endpoint(event, self.management_endpoint)

    def _route(self, session: str, fresh: bool = False) -> str | None:
        cached = self._routes.get(session)
        if cached and not fresh and self._clock() - cached[1] < fr.ROUTE_CACHE_SECONDS:
            return cached[0]
        runner = self.store.route(session)
        if runner is None:
            self._routes.pop(session, None)
        else:
            self._routes[session] = (runner, self._clock())
        return runner

    # $connect / $disconnect ------------------------------------------------------------------
    def connect(self, ident: Identity) -> None:
        """Record a connection; PermissionError for one without an authorised role."""
        if ident.role == "runner":
            self.store.add_runner(ident)
        elif ident.role == "browser" and ident.session_id:
            self.store.add_browser(ident)
        else:
            raise PermissionError("connection has no authorised role")

    def disconnect(self, ident: Identity, endpoint: str) -> None:
        """Forget a connection: a runner's browsers hear it went, a browser's runner is told."""
        old = self.store.remove(ident.connection_id)
        if ident.role == "runner":
            self._sessions_lost(endpoint, ident.connection_id, old.sessions if old else ())
        elif ident.role == "browser" and ident.session_id:
            runner = self.store.route(ident.session_id)
            if runner:
                detach = fr.DetachFrame(session_id=ident.session_id, connection_id=ident.connection_id)
                if not self.poster.post(endpoint, runner, fr.encode(detach)):
                    self._runner_gone(endpoint, runner, ident.session_id)

    def _sessions_lost(self, endpoint: str, runner: str, sessions: Iterable[str]) -> None:
        """A runner connection is gone: unroute its sessions and tell their browsers to resume."""
        for sid in sessions:
            if not self.store.drop_route(sid, runner):
                continue  # routed elsewhere already: the runner moved to a new connection (its hello)
            for browser in self.store.browsers(sid):
                self._send(
                    endpoint,
                    browser,
                    fr.ErrorFrame(
                        session_id=sid,
                        code="runner_gone",
                        message="the runner holding this terminal disconnected; send resume to reattach",
                    ),
                )

    # $default --------------------------------------------------------------------------------
    def message(self, ident: Identity, body: str | None, endpoint: str) -> None:
        """Relay one frame; PermissionError from a connection without an authorised role."""
        if ident.role not in ("runner", "browser"):
            raise PermissionError("connection has no authorised role")
        if _is_ping(body):
            # the keepalive where the MOCK ping route is not deployed: answered as that route would
            self._send(endpoint, ident.connection_id, fr.PongFrame())
        elif ident.role == "runner":
            self._from_runner(ident, body or "", endpoint)
        else:
            self._from_browser(ident, body or "", endpoint)

    def _from_browser(self, ident: Identity, body: str, endpoint: str) -> None:
        if ident.expired(self._wall_clock()):
            # the grant ends with the token, whenever the connection was opened
            return self._expired(ident, endpoint)
        try:
            frame = fr.decode(body, role="browser")
        except fr.ForbiddenActionError as e:
            return self._refuse(endpoint, ident, "forbidden", str(e))
        except fr.FrameTooLargeError as e:
            return self._refuse(endpoint, ident, "too_large", str(e))
        except fr.MalformedFrameError as e:
            return self._refuse(endpoint, ident, "malformed", str(e))
        session = ident.session_id
        if isinstance(frame, fr.OpenFrame):
            if (frame.task_id, frame.branch) != (ident.task_id, ident.branch):
                return self._refuse(
                    endpoint, ident, "not_granted", "the token does not grant that task or branch"
                )
        elif frame.session_id != session:
            return self._refuse(
                endpoint, ident, "not_granted", "the token does not grant that session", session
            )
        if ident.read_only and isinstance(
            frame, fr.InputFrame | fr.ResizeFrame | fr.CloseFrame | fr.PushFrame
        ):
            return self._refuse(endpoint, ident, "read_only", "this connection is read-only", session)
        if isinstance(frame, fr.InputFrame) and not self.limiter.take(ident.connection_id, self.input_rate):
            return self._refuse(
                endpoint, ident, "throttled", f"more than {self.input_rate} input frames a second", session
            )
        if isinstance(frame, fr.OpenFrame | fr.ResumeFrame) and (over := self._replay_budget_spent(ident)):
            return self._refuse(endpoint, ident, "throttled", over, session)
        stamped = frame.model_copy(
            update={"connection_id": ident.connection_id, "read_only": ident.read_only, "session_id": session}
        )
        assert session is not None
        if isinstance(frame, fr.OpenFrame):
            return self._open(ident, session, stamped, endpoint)
        # a post may be a whole message (128 KB): API Gateway sends it to the runner in 32 KB frames
        text = fr.encode(stamped, limit=fr.MAX_MESSAGE_BYTES)
        for fresh in (False, True):
            runner = self._route(session, fresh)
            if runner is not None and self.poster.post(endpoint, runner, text):
                return None
            if runner is not None:
                self._runner_gone(endpoint, runner, session)
        # the runner may be on its way back (its hello routes its sessions again): the session is not
        # over, so this is never ``exit``; the page keeps it and resumes with backoff
        what = "resume again shortly" if isinstance(frame, fr.ResumeFrame) else "resume, then send it again"
        return self._refuse(
            endpoint, ident, "no_runner", f"no runner holds this session right now; {what}", session
        )

    def _replay_budget_spent(self, ident: Identity) -> str | None:
        """Count an open or resume (each may make the runner replay its whole ring) against the
        budgets of its connection, its session and its user; why not, once one is spent."""
        budgets = (
            (ident.connection_id, self.control_rate, "on this connection"),
            (f"session:{ident.session_id}", self.session_replay_rate, "on this session"),
            (f"user:{ident.sub}", self.user_replay_rate, "from this user"),
        )
        for scope, limit, where in budgets:
            if not self.limiter.take(scope, limit, kind="ctl", window=self.control_window):
                return (
                    f"more than {limit} open/resume frames in {self.control_window:g} s {where}; "
                    "resume again in a few seconds"
                )
        return None

    def _expired(self, ident: Identity, endpoint: str) -> None:
        """Refuse a frame of an expired connection, and detach it from its session's runner, so it
        gets no more output either."""
        session = ident.session_id
        self._refuse(endpoint, ident, "token_expired", TOKEN_EXPIRED, session)
        runner = self._route(session) if session else None
        if runner and session:
            detach = fr.DetachFrame(session_id=session, connection_id=ident.connection_id)
            if not self.poster.post(endpoint, runner, fr.encode(detach)):
                self._runner_gone(endpoint, runner, session)

    def _open(self, ident: Identity, session: str, frame: fr.OpenFrame, endpoint: str) -> None:
        for _ in range(3):
            runner = self.store.route(session)
            if runner is None and frame.read_only:
                # a watcher attaches to a live session; it never makes a runner start one
                return self._refuse(endpoint, ident, "no_session", fr.NO_SESSION_READ_ONLY, session)
            if runner is None:
                runners = self.store.runners()
                if not runners:
                    return self._refuse(
                        endpoint, ident, "no_runner", "no runner is connected; try again later", session
                    )
                runner = self.store.claim_route(session, random.choice(runners))
            if self.poster.post(endpoint, runner, fr.encode(frame, limit=fr.MAX_MESSAGE_BYTES)):
                self._routes[session] = (runner, self._clock())
                return None
            self._runner_gone(endpoint, runner, session)
        return self._refuse(endpoint, ident, "no_runner", "no runner answered; try again later", session)

    def _runner_gone(self, endpoint: str, runner: str, session: str | None) -> None:
        logger.info("runner connection %s is gone; cleaning it", runner)
        old = self.store.remove(runner)
        self._routes = {k: v for k, v in self._routes.items() if v[0] != runner}
        if old:
            # found out here before its $disconnect: the browsers of all its sessions hear it now
            self._sessions_lost(endpoint, runner, old.sessions)
        if session:
            self.store.drop_route(session, runner)

    def _from_runner(self, ident: Identity, body: str, endpoint: str) -> None:
        try:
            frame = fr.decode(body, role="runner")
        except fr.FrameError as e:
            logger.warning("runner %s sent a bad frame: %s", ident.connection_id, e)
            return self._send(endpoint, ident.connection_id, fr.ErrorFrame(code="malformed", message=str(e)))
        if isinstance(frame, fr.HelloFrame):
            for sid in frame.sessions:
                self.store.set_route(sid, ident.connection_id)
                self._routes[sid] = (ident.connection_id, self._clock())
            self.store.runner_holds(ident.connection_id, frame.sessions)
            # the runner closes an older connection only once its sessions are routed here
            self._send(endpoint, ident.connection_id, fr.RoutedFrame(sessions=len(frame.sessions)))
            return None
        if isinstance(frame, fr.OpenedFrame):
            self.store.runner_holds(ident.connection_id, [frame.session_id])
            # a session opened through a connection the runner has since left (its route dropped
            # with it) is routed to the one that says opened; a live route is left as it is
            if self._route(frame.session_id, fresh=True) is None:
                self._routes[frame.session_id] = (
                    self.store.claim_route(frame.session_id, ident.connection_id),
                    self._clock(),
                )
        elif isinstance(frame, fr.ExitFrame):
            self.store.runner_holds(ident.connection_id, [frame.session_id], add=False)
            self.store.drop_route(frame.session_id, ident.connection_id)
            self._routes.pop(frame.session_id, None)
        session = getattr(frame, "session_id", None)
        targets = list(frame.to) or (self.store.browsers(session) if session else [])
        text = fr.for_browser(frame)
        for target in targets:
            if not self.poster.post(endpoint, target, text):
                # clean exactly the id we posted to, and tell the runner it has one viewer less
                self.store.remove(target)
                if session:
                    detach = fr.DetachFrame(session_id=session, connection_id=target)
                    self.poster.post(endpoint, ident.connection_id, fr.encode(detach))
        return None

    def _refuse(
        self, endpoint: str, ident: Identity, code: str, message: str, session: str | None = None
    ) -> None:
        logger.info("refused a frame from %s: %s", ident.connection_id, code)
        if len(message) > MAX_REFUSAL_CHARS:
            message = message[: MAX_REFUSAL_CHARS - 3] + "..."
        self._send(
            endpoint, ident.connection_id, fr.ErrorFrame(code=code, message=message, session_id=session)
        )

    def _send(self, endpoint: str, connection_id: str, frame: Any) -> None:
        if not self.poster.post(endpoint, connection_id, fr.for_browser(frame)):
            self.store.remove(connection_id)


def _is_ping(body: str | None) -> bool:
    """A keepalive ``{"action": "ping"}``."""
    if not body or '"ping"' not in body:
        return False
    try:
        return fr.decode(body, role="any").action == "ping"
    except fr.FrameError:
        return False


def relay_from_settings(settings: WsSettings) -> Relay:
    """The relay a WebSocket function builds once per process from its WsSettings."""
    ddb = aws.client("dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
    poster = Poster(
        lambda endpoint: aws.client(
            "apigatewaymanagementapi", region=settings.aws_region, endpoint_url=endpoint, read_timeout=10
        )
    )
    return Relay(
        ConnectionStore(ddb, settings.connections_table, settings.connection_ttl_seconds),
        poster,
        RateLimiter(ddb, settings.connections_table),
        input_rate=settings.input_rate_per_second,
        control_rate=settings.control_rate_per_window,
        management_endpoint=settings.management_endpoint,
    )
