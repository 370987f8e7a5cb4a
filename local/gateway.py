"""The local stand-in for the API Gateway WebSocket endpoint.

- A websockets server with API Gateway's limits (``GatewayLimits``; AWS's values unless a test
  shortens them): a frame over 32 KB or a message over 128 KB closes the connection with 1009; a
  connection with no message from its client for 10 minutes, or open for 2 hours, is closed with
  1001 (``$disconnect`` sees the code). Control frames (WebSocket pings) do not count as activity;
  what is posted to a connection goes out in frames of at most 32 KB. The server
  gives each connection an id, calls the REAL authorizer and ``$connect`` handler before accepting
  the handshake, selects a route from ``$request.body.action`` (no such route -> ``$default``) and
  calls the real handlers in-process with API-Gateway-shaped events. Routes, authorizer and stage are
  template.yaml's, as local.deploy parses them (``LocalGateway.from_spec``). A route with a MOCK
  integration (``ping``) is answered by the gateway itself with its route response, no handler called.
- A small HTTP server with ``POST/GET/DELETE [/{stage}]/@connections/{id}``, so boto3's
  ``apigatewaymanagementapi`` client works unchanged with ``endpoint_url`` (410 GoneException for
  unknown ids, 413 over 128 KiB).
- The terminal page (``web/index.html``) on ``GET /`` of the WebSocket port, with its module and the
  vendored xterm.js (``web/node_modules``, from ``web/package-lock.json``) beside it on the same origin,
  and, for the demo only (``demo_tokens``), ``GET /token?task=ID|branch=B[&ro=1]``: a fresh browser token,
  and ``GET /task-status?task=ID``: the task's status, for the page's watch mode.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import http
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from local.demo_task_status import task_status
from local.demo_tokens import demo_token
from local.lambdas import LocalFunction
from shared import frames as fr
from shared.branches import DEFAULT_PROTECTED

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "web" / "index.html"
PAGE_STAGE_META = '<meta name="aipm-ws-stage" content="{}">'
WEB = ROOT / "web"
XTERM = WEB / "node_modules" / "@xterm"
# what the page loads from its own origin: path -> (file, content type); nothing else is served
STATIC = {
    "aipm-terminal.js": (WEB / "aipm-terminal.js", "text/javascript; charset=utf-8"),
    "vendor/xterm.mjs": (XTERM / "xterm" / "lib" / "xterm.mjs", "text/javascript; charset=utf-8"),
    "vendor/xterm.css": (XTERM / "xterm" / "css" / "xterm.css", "text/css; charset=utf-8"),
    "vendor/addon-fit.mjs": (XTERM / "addon-fit" / "lib" / "addon-fit.mjs", "text/javascript; charset=utf-8"),
}
DEMO_TOKEN_TTL = 900
MAX_MESSAGE = 128 * 1024
MAX_FRAME = 32 * 1024
IDLE_TIMEOUT_SECONDS = 600.0
MAX_CONNECTION_SECONDS = 7200.0
# what API Gateway closes a connection with at its idle timeout and its maximum duration
GOING_AWAY = 1001
DURATIONS_RECHECK_SECONDS = 1.0  # how often an open connection's durations are checked at the latest
RUNNER_CONCURRENCY = 8  # concurrent invocations for one runner connection's frames
API_ID = "localws"
ACCOUNT = "123456789012"

# what template.yaml declares today; a gateway made from local.deploy's WebSocketSpec uses the template's own
DEFAULT_ROUTES = {"$connect": "ws_connect", "$disconnect": "ws_disconnect", "$default": "ws_relay"}
DEFAULT_MOCK_ROUTES: dict[str, str | None] = {"ping": '{"action": "pong"}'}
DEFAULT_AUTHORIZER = "ws_authorizer"
DEFAULT_IDENTITY_SOURCES = ("route.request.querystring.token",)
DEFAULT_STAGE = "local"


@dataclass(frozen=True)
class GatewayLimits:
    """API Gateway's WebSocket limits (AWS's values by default; tests shorten them)."""

    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    max_connection_seconds: float = MAX_CONNECTION_SECONDS
    max_frame_bytes: int = MAX_FRAME
    max_message_bytes: int = MAX_MESSAGE

    def __post_init__(self) -> None:
        if min(self.idle_timeout, self.max_connection_seconds) <= 0:
            raise ValueError("the idle timeout and the maximum connection duration must be positive")
        if not 16 <= self.max_frame_bytes <= self.max_message_bytes:
            raise ValueError("the frame limit must be at least 16 bytes and at most the message limit")


@dataclass
class _Conn:
    connection_id: str
    authorizer: dict[str, Any]
    connected_at: int
    source_ip: str
    user_agent: str
    ws: ServerConnection | None = None
    last_active: int = 0
    last_in: float = field(default_factory=time.monotonic)  # the client's last message (idle timeout)
    opened: float = field(default_factory=time.monotonic)
    max_in: int = 0
    max_out: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_connection_id() -> str:
    # API Gateway ids look like "L0SM9cOFvHcCIhw=": 10 random bytes in base64 (url-safe here)
    return base64.urlsafe_b64encode(os.urandom(10)).decode()


class LocalGateway:
    """API Gateway's WebSocket endpoint on loopback, running the real ws_* handlers in-process.

    ``env`` is the functions' environment (``CONNECTIONS_TABLE``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``TOKEN_SECRET``/``RUNNER_SECRET`` or their ``*_ARN``); ``WS_MANAGEMENT_ENDPOINT`` is added.
    Missing secrets are generated and exposed as ``token_secret`` / ``runner_secret``.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        stage: str = DEFAULT_STAGE,
        routes: dict[str, str] | None = None,
        authorizer: str | None = DEFAULT_AUTHORIZER,
        identity_sources: list[str] | tuple[str, ...] = DEFAULT_IDENTITY_SOURCES,
        workers: int = 16,
        mock_routes: dict[str, str | None] | None = None,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_connection_seconds: float = MAX_CONNECTION_SECONDS,
        max_frame_bytes: int = MAX_FRAME,
        max_message_bytes: int = MAX_MESSAGE,
        protected_branches: tuple[str, ...] | list[str] = DEFAULT_PROTECTED,
        demo_tokens: bool = False,
    ) -> None:
        """``routes`` maps route keys (``$connect``, ``$disconnect``, ``$default``, or an action) to
        function folders under ``functions/``; ``authorizer`` is the ``$connect`` REQUEST authorizer's
        function (None: connections are not authorised); ``identity_sources`` are what API Gateway
        requires before it calls the authorizer. The defaults are what template.yaml declares;
        ``from_spec`` takes them from the template as local.deploy parses it. ``mock_routes`` maps
        the route keys of MOCK integrations to the reply their route response sends (None: none).
        ``demo_tokens``: serve ``GET /token`` (any task or branch, to anyone who can reach the port:
        the demo's only).

        The limits are API Gateway's unless shortened: ``idle_timeout`` (seconds without a message
        from the client), ``max_connection_seconds``, ``max_frame_bytes`` and ``max_message_bytes``."""
        self.env = dict(env)
        self.demo_tokens = demo_tokens
        if not self.env.get("TOKEN_SECRET") and not self.env.get("TOKEN_SECRET_ARN"):
            self.env["TOKEN_SECRET"] = secrets.token_urlsafe(32)
        if not self.env.get("RUNNER_SECRET") and not self.env.get("RUNNER_SECRET_ARN"):
            self.env["RUNNER_SECRET"] = secrets.token_urlsafe(32)
        self.port = int(os.environ.get("PORT", "8080")) if port is None else port
        self.host = host
        self.stage = stage
        self.routes = dict(DEFAULT_ROUTES if routes is None else routes)
        self.mock_routes = dict(DEFAULT_MOCK_ROUTES if mock_routes is None else mock_routes)
        self.protected_branches = tuple(protected_branches)
        self.limits = GatewayLimits(idle_timeout, max_connection_seconds, max_frame_bytes, max_message_bytes)
        missing = {"$connect", "$default"} - set(self.routes)
        if missing:
            raise ValueError(f"a WebSocket API needs the routes {sorted(missing)}")
        self.authorizer = authorizer
        self.identity_sources = list(identity_sources)
        self._functions: dict[str, LocalFunction] = {}
        self._authorizer: LocalFunction | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ws-lambda"
        )
        self._conns: dict[str, _Conn] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.ws_port = 0
        self.max_message_by_role: dict[str, int] = {}
        self.connections_by_role: dict[str, int] = {}  # connections accepted, by the authorizer's role
        self.mock_replies = 0  # messages a MOCK route answered (no handler called)
        self.closed_by_limit: dict[str, int] = {}  # "idle timeout" / "connection duration limit" -> count
        self._tasks_client: Any = None  # the demo's /task-status reads the queue table through it

    # -- properties --------------------------------------------------------------------------
    @property
    def token_secret(self) -> str | None:
        """The browser-token key (read from Secrets Manager when only ``TOKEN_SECRET_ARN`` is set)."""
        return self._secret("TOKEN_SECRET")

    @property
    def runner_secret(self) -> str | None:
        """The runner key (read from Secrets Manager when only ``RUNNER_SECRET_ARN`` is set)."""
        return self._secret("RUNNER_SECRET")

    def _secret(self, name: str) -> str | None:
        if not self.env.get(name) and self.env.get(f"{name}_ARN"):
            from shared.tokens import SecretSource

            value = SecretSource(
                None,
                self.env[f"{name}_ARN"],
                region=self.env.get("AWS_REGION"),
                endpoint_url=self.env.get("AWS_ENDPOINT_URL"),
            ).get()
            if value:
                self.env[name] = value
        return self.env.get(name)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/{self.stage}"

    @property
    def page_url(self) -> str:
        return f"http://{self.host}:{self.ws_port}/"

    @property
    def management_url(self) -> str:
        assert self._http is not None, "start the gateway first"
        return f"http://{self.host}:{self._http.server_address[1]}/{self.stage}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalGateway:
        self._http = ThreadingHTTPServer((self.host, 0), _management_handler(self))
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, name="ws-management", daemon=True
        )
        self._http_thread.start()
        env = {**self.env, "WS_MANAGEMENT_ENDPOINT": self.management_url}
        for key, name in self.routes.items():
            self._functions[key] = LocalFunction(name, "app.lambda_handler", Path("functions") / name, env)
        if self.authorizer:
            self._authorizer = LocalFunction(
                self.authorizer, "app.lambda_handler", Path("functions") / self.authorizer, env
            )
        self._thread = threading.Thread(target=self._run, name="ws-gateway", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        logger.info("local WebSocket gateway at %s (management %s)", self.ws_url, self.management_url)
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            # a message over the limit, or one frame over the frame limit, closes with 1009
            max_size=(self.limits.max_message_bytes, self.limits.max_frame_bytes),
            # API Gateway answers a client's pings but sends none; they keep nothing alive
            ping_interval=None,
        ) as server:
            self.ws_port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close()
            await server.wait_closed()

    # -- events ------------------------------------------------------------------------------
    def _request_context(self, conn: _Conn, route: str, event_type: str, **extra: Any) -> dict[str, Any]:
        now = _now_ms()
        ctx = {
            "routeKey": route,
            "eventType": event_type,
            "extendedRequestId": uuid.uuid4().hex[:16],
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": conn.connected_at,
            "requestTimeEpoch": now,
            "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            "requestId": uuid.uuid4().hex[:16],
            "domainName": f"{self.host}:{self.ws_port}",
            "connectionId": conn.connection_id,
            "apiId": API_ID,
            **extra,
        }
        if conn.authorizer:
            ctx["authorizer"] = conn.authorizer
        return ctx

    @classmethod
    def from_spec(cls, env: dict[str, str], spec: Any, **kwargs: Any) -> LocalGateway:
        """A gateway with the routes, authorizer and stage of a ``local.deploy.WebSocketSpec``."""
        return cls(
            env,
            stage=spec.stage,
            routes=dict(spec.routes),
            authorizer=spec.authorizer,
            identity_sources=list(spec.identity_sources),
            mock_routes=dict(getattr(spec, "mock_routes", None) or {}),
            **kwargs,
        )

    async def _invoke(self, key: str, event: dict[str, Any]) -> Any:
        """Run the route ``key``'s function (a route without one is a no-op, as an unset route is)."""
        assert self._loop is not None
        function = self._functions.get(key)
        if function is None:
            return None
        return await self._loop.run_in_executor(self._pool, function.invoke, event)

    def _identity_present(self, query: dict[str, str], headers: Any) -> bool:
        for source in self.identity_sources:
            kind, _, name = source.removeprefix("route.request.").partition(".")
            if kind == "querystring" and not query.get(name):
                return False
            if kind == "header" and not headers.get(name):
                return False
        return True

    # -- handshake: authorizer, then $connect --------------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if "upgrade" not in request.headers.get("Connection", "").lower():
            split = urlsplit(request.path)
            if self.demo_tokens and split.path.removeprefix(f"/{self.stage}") == "/task-status":
                assert self._loop is not None
                answer = await self._loop.run_in_executor(
                    self._pool, task_status, split.query, self._read_task_row
                )
                return self._json(connection, answer)
            return self._page(connection, request)
        split = urlsplit(request.path)
        multi = parse_qs(split.query)
        query = {k: v[-1] for k, v in multi.items()}
        headers = dict(request.headers.raw_items())
        remote = connection.remote_address[0] if connection.remote_address else "127.0.0.1"
        conn = _Conn(_new_connection_id(), {}, _now_ms(), remote, request.headers.get("User-Agent", ""))
        base = {
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": query or None,
            "multiValueQueryStringParameters": multi or None,
            "stageVariables": None,
        }
        auth_event = {
            "type": "REQUEST",
            "methodArn": f"arn:aws:execute-api:us-east-1:{ACCOUNT}:{API_ID}/{self.stage}/$connect",
            **base,
            "requestContext": self._request_context(conn, "$connect", "CONNECT"),
        }
        if self._authorizer is not None:
            if not self._identity_present(query, request.headers):
                # a missing identity source: API Gateway answers 401 without calling the authorizer
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            assert self._loop is not None
            try:
                policy = await self._loop.run_in_executor(self._pool, self._authorizer.invoke, auth_event)
            except Exception as e:
                if str(e) == "Unauthorized":
                    return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
                logger.warning("authorizer failed: %s", type(e).__name__)
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, "Internal server error\n")
            statements = (policy or {}).get("policyDocument", {}).get("Statement", [])
            if not statements or any(s.get("Effect") != "Allow" for s in statements):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
            conn.authorizer = {**(policy.get("context") or {}), "principalId": policy.get("principalId")}
        connect_event = {
            **base,
            "isBase64Encoded": False,
            "requestContext": self._request_context(conn, "$connect", "CONNECT"),
        }
        try:
            result = await self._invoke("$connect", connect_event)
        except Exception:
            logger.exception("$connect handler failed")
            return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, "Internal server error\n")
        status = int((result or {}).get("statusCode", 200))
        if not 200 <= status < 300:
            return connection.respond(status, "Forbidden\n")
        connection.aipm_conn = conn  # type: ignore[attr-defined]
        return None

    def _page(self, connection: ServerConnection, request: Request) -> Response:
        split = urlsplit(request.path)
        path = split.path
        # the page may be opened at / or at /{stage}/: what it loads sits beside it either way
        rel = path.removeprefix(f"/{self.stage}").lstrip("/")
        if rel in STATIC:
            file, content_type = STATIC[rel]
            if not file.is_file():
                return connection.respond(
                    http.HTTPStatus.NOT_FOUND, f"{rel} is missing: run `make web-deps`\n"
                )
            return self._respond(connection, http.HTTPStatus.OK, file.read_bytes(), content_type)
        if rel == "token" and self.demo_tokens:
            return self._token(connection, split.query)
        if path not in ("/", "/index.html", f"/{self.stage}", f"/{self.stage}/") or not PAGE.is_file():
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not found\n")
        # the page connects to this gateway's stage unless its URL says otherwise (?ws=...)
        page = PAGE.read_text().replace(PAGE_STAGE_META.format("local"), PAGE_STAGE_META.format(self.stage))
        return self._respond(connection, http.HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")

    @staticmethod
    def _respond(
        connection: ServerConnection, status: http.HTTPStatus, body: bytes, content_type: str
    ) -> Response:
        response = connection.respond(status, "")
        response.body = body
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Content-Type"] = content_type
        response.headers["Content-Length"] = str(len(body))
        response.headers["Cache-Control"] = "no-store"
        return response

    def _token(self, connection: ServerConnection, query: str) -> Response:
        """The demo page's ``tokenUrl``: a fresh browser token (local stack only)."""
        return self._json(connection, demo_token(query, self.token_secret, self.protected_branches))

    def _read_task_row(self, task_id: str) -> dict[str, Any] | None:
        """The demo page's ``/task-status``: a task's row from the stack's queue table, or None."""
        from shared import aws
        from shared.models import from_dynamodb

        if self._tasks_client is None:
            self._tasks_client = aws.client(
                "dynamodb",
                region=self.env.get("AWS_REGION"),
                endpoint_url=self.env.get("AWS_ENDPOINT_URL"),
                read_timeout=5,
            )
        table = self.env.get("TABLE_NAME")
        if not table:
            raise LookupError("this gateway knows no task table")
        item = self._tasks_client.get_item(TableName=table, Key={"id": {"S": task_id}}).get("Item")
        return from_dynamodb(item) if item else None

    @staticmethod
    def _json(connection: ServerConnection, answer: Any) -> Response:
        response = connection.respond(answer.status, json.dumps(answer.body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- messages ------------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        conn: _Conn = ws.aipm_conn  # type: ignore[attr-defined]
        conn.ws = ws
        self._conns[conn.connection_id] = conn
        role = str(conn.authorizer.get("role", "unknown"))
        self.connections_by_role[role] = self.connections_by_role.get(role, 0) + 1
        code, reason = 1000, ""
        in_flight = asyncio.Semaphore(RUNNER_CONCURRENCY)
        pending: set[asyncio.Task] = set()
        # a browser's frames go to its handlers one at a time, in order, from a queue: the socket is
        # still read meanwhile, so its activity (a keepalive behind a slow open) is seen as it comes
        serial: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        worker = asyncio.create_task(self._invoke_in_order(ws, conn, serial)) if role != "runner" else None
        watchdog = asyncio.create_task(self._enforce_durations(conn, ws))
        try:
            async for message in ws:
                body = message if isinstance(message, str) else message.decode("utf-8", "replace")
                size = len(body.encode())
                conn.max_in = max(conn.max_in, size)
                self.max_message_by_role[role] = max(self.max_message_by_role.get(role, 0), size)
                conn.last_active = _now_ms()
                conn.last_in = time.monotonic()
                route = self._select_route(body)
                if route in self.mock_routes:
                    # a MOCK integration: API Gateway answers from its route response, calls no Lambda
                    reply = self.mock_routes[route]
                    if reply is not None:
                        self.mock_replies += 1
                        await self._send_framed(ws, reply)
                    continue
                event = {
                    "requestContext": self._request_context(
                        conn, route, "MESSAGE", messageId=uuid.uuid4().hex[:16]
                    ),
                    "body": body,
                    "isBase64Encoded": False,
                }
                if role == "runner":
                    # API Gateway runs a connection's messages through concurrent invocations; the
                    # runner's frames carry a seq for exactly that, so they are not serialised here
                    await in_flight.acquire()
                    task = asyncio.create_task(self._invoke_or_report(ws, conn, route, event))
                    task.add_done_callback(lambda _t: in_flight.release())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                else:
                    # a browser's keystrokes keep their order (input frames carry no seq)
                    serial.put_nowait(event)
        except ConnectionClosed:
            pass
        finally:
            watchdog.cancel()
            if worker is not None:
                serial.put_nowait(None)  # what arrived before the close is still handled, in order
                await asyncio.gather(worker, return_exceptions=True)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if ws.close_code is not None:
                code, reason = ws.close_code, ws.close_reason or ""
            self._conns.pop(conn.connection_id, None)
            conn.closed.set()
            event = {
                "headers": {},
                "multiValueHeaders": {},
                "requestContext": self._request_context(
                    conn, "$disconnect", "DISCONNECT", disconnectStatusCode=code, disconnectReason=reason
                ),
                "isBase64Encoded": False,
            }
            try:
                await self._invoke("$disconnect", event)
            except Exception:
                logger.exception("$disconnect handler failed")

    async def _invoke_in_order(
        self, ws: ServerConnection, conn: _Conn, events: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        """Hand a connection's frames to their handlers one after the other, until ``None``."""
        while (event := await events.get()) is not None:
            await self._invoke_or_report(ws, conn, event["requestContext"]["routeKey"], event)

    async def _invoke_or_report(self, ws: ServerConnection, conn: _Conn, route: str, event: dict) -> None:
        try:
            await self._invoke(route, event)
        except Exception:
            logger.exception("%s handler failed", route)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(
                    json.dumps(
                        {
                            "message": "Internal server error",
                            "connectionId": conn.connection_id,
                            "requestId": event["requestContext"]["requestId"],
                        }
                    )
                )

    def _select_route(self, body: str) -> str:
        """``$request.body.action``: the route of that key, else ``$default`` (``$``-keys are never
        selected by a message); a body API Gateway cannot read as JSON (too deep included) goes to
        ``$default``, whose handler refuses it."""
        try:
            action = json.loads(body).get("action")
        except (ValueError, AttributeError, RecursionError, TypeError):
            return "$default"
        known = action in self.routes or action in self.mock_routes
        if isinstance(action, str) and known and not action.startswith("$"):
            return action
        return "$default"

    # -- management API (called from the HTTP server's threads) ----------------------------------
    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _post(self, connection_id: str, data: bytes) -> bool:
        conn = self._conns.get(connection_id)
        if conn is None or conn.ws is None:
            return False
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = None
        conn.max_out = max(conn.max_out, len(data))
        try:
            await self._send_framed(conn.ws, text if text is not None else data)
        except ConnectionClosed:
            return False
        return True

    async def _send_framed(self, ws: ServerConnection, message: str | bytes) -> None:
        """Send one message as API Gateway does: in frames of at most the frame limit."""
        limit = self.limits.max_frame_bytes
        if isinstance(message, bytes):
            parts: list[Any] = [message[i : i + limit] for i in range(0, len(message), limit)] or [b""]
        else:
            parts = fr.utf8_pieces(message, limit)
        await ws.send(parts[0] if len(parts) == 1 else parts)

    async def _enforce_durations(self, conn: _Conn, ws: ServerConnection) -> None:
        """Close the connection with 1001 at the idle timeout (no message from its client) or at
        the maximum connection duration, whichever comes first, as API Gateway does. The limits are
        read again at least every second (``set_durations`` changes them for open connections too)."""
        while True:
            limits = self.limits
            now = time.monotonic()
            idle_at = conn.last_in + limits.idle_timeout
            end_at = conn.opened + limits.max_connection_seconds
            if now >= end_at or now >= idle_at:
                why = "connection duration limit" if now >= end_at else "idle timeout"
                logger.info("closing %s at its %s", conn.connection_id, why)
                self.closed_by_limit[why] = self.closed_by_limit.get(why, 0) + 1
                await ws.close(GOING_AWAY, "Going away")
                return
            await asyncio.sleep(min(idle_at - now, end_at - now, DURATIONS_RECHECK_SECONDS))

    def set_durations(
        self, *, idle_timeout: float | None = None, max_connection_seconds: float | None = None
    ) -> None:
        """Change the idle timeout or the maximum connection duration of this running gateway (tests
        of the limits take turns on one gateway): open connections meet the new values within a
        second, a connection older than a new maximum is closed then, as at its mark."""
        changes: dict[str, float] = {}
        if idle_timeout is not None:
            changes["idle_timeout"] = idle_timeout
        if max_connection_seconds is not None:
            changes["max_connection_seconds"] = max_connection_seconds
        self.limits = dataclasses.replace(self.limits, **changes)

    async def _close(self, connection_id: str) -> bool:
        conn = self._conns.get(connection_id)
        if conn is None or conn.ws is None:
            return False
        await conn.ws.close(1000, "closed by the API")
        return True

    def connection_info(self, connection_id: str) -> dict[str, Any] | None:
        conn = self._conns.get(connection_id)
        if conn is None:
            return None
        return {
            "connectedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(conn.connected_at / 1000)),
            "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            "lastActiveAt": time.strftime(
                "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime((conn.last_active or conn.connected_at) / 1000)
            ),
        }

    @property
    def connection_ids(self) -> list[str]:
        return list(self._conns)

    def connection_ids_of(self, role: str) -> list[str]:
        """The open connections whose authorizer gave them ``role`` (``browser`` or ``runner``)."""
        return [cid for cid, conn in list(self._conns.items()) if conn.authorizer.get("role") == role]


_CONN_PATH = re.compile(r"^(?:/[^/@]+)?/@connections/([^/?]+)$")


def _management_handler(gateway: LocalGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # a reply with a body goes out as two writes (headers, body): with Nagle's algorithm the body
        # waits for the client's delayed ACK, ~40 ms on every GoneException and connection lookup
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("management api: " + format, *args)

        def _id(self) -> str | None:
            m = _CONN_PATH.match(urlsplit(self.path).path)
            return unquote(m.group(1)) if m else None

        def _reply(self, status: int, body: dict[str, Any] | None = None, error: str | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if error:
                self.send_header("x-amzn-ErrorType", error)
            self.end_headers()
            self.wfile.write(data)

        def _gone(self) -> None:
            self._reply(410, {"message": None}, "GoneException")

        def do_POST(self) -> None:
            cid = self._id()
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            if cid is None:
                return self._reply(404, {"message": "Not Found"}, "NotFoundException")
            if length > gateway.limits.max_message_bytes:
                return self._reply(413, {"message": "Payload too large"}, "PayloadTooLargeException")
            if not gateway._call(gateway._post(cid, data)):
                return self._gone()
            return self._reply(200)

        def do_GET(self) -> None:
            cid = self._id()
            info = gateway.connection_info(cid) if cid else None
            if info is None:
                return self._gone()
            return self._reply(200, info)

        def do_DELETE(self) -> None:
            cid = self._id()
            if cid is None or not gateway._call(gateway._close(cid)):
                return self._gone()
            return self._reply(204)

    return Handler


def start_local_gateway(
    stack: Any,
    function_env: dict[str, str],
    port: int | None = None,
    websocket: Any = None,
    limits: dict[str, Any] | None = None,
) -> LocalGateway:
    """What ``aipm local up`` calls: a started gateway over the stack's connections table, with the
    routes, authorizer and stage template.yaml declares (``websocket``: the ``WebSocketSpec`` that
    local.deploy parsed; without one, the defaults, which match today's template). ``limits``
    shortens API Gateway's (``idle_timeout``, ``max_connection_seconds``, ``max_frame_bytes``,
    ``max_message_bytes``), for tests."""
    kwargs = {"port": port, "demo_tokens": True, **(limits or {})}
    if websocket is None:
        return LocalGateway(function_env, **kwargs).start()
    return LocalGateway.from_spec(function_env, websocket, **kwargs).start()
