"""The WebSocket relay behind API Gateway: who may connect, and where each frame goes.

Connections live in the connections table (key ``connectionId``, GSI ``sessionId-index``, TTL
``expiresAt``). Three kinds of item share it:

- a browser: ``role=browser``, ``sessionId`` = the one session its token grants, ``readOnly``;
- a runner: ``role=runner``, ``sessionId=#runners`` (so runners are listed by a query, never a scan),
  ``sessions`` = the sessions it holds;
- a route: ``connectionId=route#<sessionId>``, ``runnerConnectionId`` = the runner holding it.

Identity (role, grant, read-only) comes from the authorizer's context, which API Gateway passes on
every route of the connection, so most frames need no read. Browser frames go to the session's
runner; runner frames go to the browser connections they name in ``to``. A ``GoneException`` only
ever deletes the connection id that was posted to.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared import frames as fr
from shared import tokens

logger = logging.getLogger(__name__)

RUNNERS_KEY = "#runners"
ROUTE_PREFIX = "route#"
RATE_PREFIX = "rate#"
ROUTE_CACHE_SECONDS = 5.0
# open / resume per connection and window: each makes the runner start a session or replay its ring
# (a resume from seq 0 replays up to the whole 8 MB), so they get a far smaller budget than keystrokes
CONTROL_RATE = 5
CONTROL_WINDOW_SECONDS = 10.0
SESSION_INDEX = "sessionId-index"


# -- authorizer ----------------------------------------------------------------------------------
class UnauthorizedError(Exception):
    """No credential at all: API Gateway answers 401 when an authorizer raises ``Unauthorized``."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def _policy(principal: str, effect: str, resource: str, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": context,
    }


def authorize(event: dict[str, Any], token_secret: str | None, runner_secret: str | None) -> dict[str, Any]:
    """The REQUEST authorizer's answer for ``$connect``: Allow with the grant as context, or Deny.

    Raises UnauthorizedError when there is no token (401); a bad token is a Deny (403).
    """
    params = event.get("queryStringParameters") or {}
    token = params.get("token")
    resource = event.get("methodArn", "*")
    if not token:
        raise UnauthorizedError()
    claims: tokens.TokenClaims | None = None
    failure = "refused"
    # a runner token is checked first: it is signed with a different secret than browser tokens
    for secret, role in ((runner_secret, "runner"), (token_secret, "browser")):
        if not secret:
            continue
        try:
            candidate = tokens.verify(token, secret)
        except tokens.TokenExpiredError:
            failure = "expired"
            continue
        except tokens.TokenForgedError:
            continue
        except tokens.TokenMalformedError:
            failure = "malformed"
            break
        if candidate.role == role:
            claims = candidate
            break
    if claims is None:
        logger.info("connect refused: %s token", failure)
        return _policy("anonymous", "Deny", resource, {"reason": failure})
    if claims.role == "runner":
        context: dict[str, Any] = {"role": "runner", "sub": claims.sub}
    else:
        context = {
            "role": "browser",
            "sub": claims.sub,
            "sessionId": fr.session_id_for(task_id=claims.task, branch=claims.branch),
            "readOnly": claims.ro,
            "exp": claims.exp,
        }
        if claims.task is not None:
            context["taskId"] = claims.task
        else:
            context["branch"] = claims.branch
    return _policy(claims.sub, "Allow", resource, context)


@dataclass(frozen=True)
class Identity:
    """Who is on a connection, from the authorizer context API Gateway attaches to every event."""

    connection_id: str
    role: str
    sub: str
    session_id: str | None = None
    task_id: str | None = None
    branch: str | None = None
    read_only: bool = False

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Identity:
        ctx = event.get("requestContext") or {}
        auth = ctx.get("authorizer") or {}
        read_only = auth.get("readOnly", False)
        return cls(
            connection_id=ctx["connectionId"],
            role=str(auth.get("role") or "unknown"),
            sub=str(auth.get("principalId") or auth.get("sub") or ""),
            session_id=auth.get("sessionId") or None,
            task_id=auth.get("taskId") or None,
            branch=auth.get("branch") or None,
            read_only=read_only is True or str(read_only).lower() == "true",
        )


def management_endpoint(event: dict[str, Any], override: str | None) -> str:
    """Where PostToConnection goes: the local stand-in's URL, or ``https://{domainName}/{stage}``."""
    if override:
        return override.rstrip("/")
    ctx = event["requestContext"]
    return f"https://{ctx['domainName']}/{ctx['stage']}"


# -- storage -------------------------------------------------------------------------------------
class ConnectionStore:
    """The connections table, through one injected DynamoDB client."""

    def __init__(
        self, dynamodb: Any, table: str, ttl_seconds: int = 7800, clock: Callable[[], float] = time.time
    ):
        self._ddb = dynamodb
        self.table = table
        self._ttl = ttl_seconds
        self._clock = clock

    def _expires(self) -> dict[str, str]:
        return {"N": str(int(self._clock() + self._ttl))}

    def add_browser(self, ident: Identity) -> None:
        item = {
            "connectionId": {"S": ident.connection_id},
            "role": {"S": "browser"},
            "sessionId": {"S": ident.session_id or ""},
            "readOnly": {"BOOL": ident.read_only},
            "sub": {"S": ident.sub},
            "expiresAt": self._expires(),
        }
        self._ddb.put_item(TableName=self.table, Item=item)

    def add_runner(self, ident: Identity) -> None:
        item = {
            "connectionId": {"S": ident.connection_id},
            "role": {"S": "runner"},
            "sessionId": {"S": RUNNERS_KEY},
            "sub": {"S": ident.sub},
            "expiresAt": self._expires(),
        }
        self._ddb.put_item(TableName=self.table, Item=item)

    def remove(self, connection_id: str) -> dict[str, Any] | None:
        """Delete one connection; returns what it was (None if it was already gone)."""
        resp = self._ddb.delete_item(
            TableName=self.table, Key={"connectionId": {"S": connection_id}}, ReturnValues="ALL_OLD"
        )
        return resp.get("Attributes")

    def take_input_token(self, connection_id: str, limit: int) -> bool:
        """Count one input frame in this second's window; False once ``limit`` is reached."""
        return self.take_token(connection_id, limit)

    def take_token(self, connection_id: str, limit: int, *, kind: str = "", window: float = 1.0) -> bool:
        """Count one frame of ``kind`` in the current ``window``-second window; False past ``limit``.

        One atomic counter per connection, kind and window (an ``ADD`` on its own item, expiring by
        TTL): a single write per frame, exact across any number of concurrent relay instances.
        """
        now = self._clock()
        scope = f"{kind}#" if kind else ""
        resp = self._ddb.update_item(
            TableName=self.table,
            Key={"connectionId": {"S": f"{RATE_PREFIX}{connection_id}#{scope}{int(now // window)}"}},
            UpdateExpression="ADD rc :one SET expiresAt = :exp",
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":exp": {"N": str(int(now + max(60.0, 2 * window)))},
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(resp["Attributes"]["rc"]["N"]) <= limit

    def route(self, session_id: str) -> str | None:
        resp = self._ddb.get_item(
            TableName=self.table, Key={"connectionId": {"S": ROUTE_PREFIX + session_id}}, ConsistentRead=True
        )
        item = resp.get("Item")
        return item["runnerConnectionId"]["S"] if item else None

    def claim_route(self, session_id: str, runner_connection_id: str) -> str:
        """Route the session to this runner unless another already holds it; returns the holder."""
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item=self._route_item(session_id, runner_connection_id),
                ConditionExpression="attribute_not_exists(connectionId)",
            )
            return runner_connection_id
        except ClientError as e:
            if not _conditional(e):
                raise
        holder = self.route(session_id)
        return holder or self.claim_route(session_id, runner_connection_id)

    def set_route(self, session_id: str, runner_connection_id: str) -> None:
        self._ddb.put_item(TableName=self.table, Item=self._route_item(session_id, runner_connection_id))

    def _route_item(self, session_id: str, runner_connection_id: str) -> dict[str, Any]:
        return {
            "connectionId": {"S": ROUTE_PREFIX + session_id},
            "role": {"S": "route"},
            "sessionId": {"S": session_id},
            "runnerConnectionId": {"S": runner_connection_id},
            "expiresAt": self._expires(),
        }

    def drop_route(self, session_id: str, runner_connection_id: str | None = None) -> None:
        """Delete the session's route (only if it still points at ``runner_connection_id`` when given)."""
        kwargs: dict[str, Any] = {}
        if runner_connection_id:
            kwargs = {
                "ConditionExpression": "runnerConnectionId = :r",
                "ExpressionAttributeValues": {":r": {"S": runner_connection_id}},
            }
        try:
            self._ddb.delete_item(
                TableName=self.table, Key={"connectionId": {"S": ROUTE_PREFIX + session_id}}, **kwargs
            )
        except ClientError as e:
            if not _conditional(e):
                raise

    def runners(self) -> list[str]:
        return self._query_ids(RUNNERS_KEY)

    def browsers(self, session_id: str) -> list[str]:
        return [c for c in self._query_ids(session_id) if not c.startswith(ROUTE_PREFIX)]

    def _query_ids(self, key: str) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": SESSION_INDEX,
            "KeyConditionExpression": "sessionId = :s",
            "ExpressionAttributeValues": {":s": {"S": key}},
        }
        while True:
            resp = self._ddb.query(**kwargs)
            ids += [item["connectionId"]["S"] for item in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return ids
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def runner_holds(self, runner_connection_id: str, session_ids: list[str], add: bool = True) -> None:
        if not session_ids:
            return
        op = "ADD" if add else "DELETE"
        try:
            self._ddb.update_item(
                TableName=self.table,
                Key={"connectionId": {"S": runner_connection_id}},
                UpdateExpression=f"{op} sessions :s",
                ConditionExpression="attribute_exists(connectionId)",
                ExpressionAttributeValues={":s": {"SS": list(session_ids)}},
            )
        except ClientError as e:
            if not _conditional(e):
                raise


def _conditional(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


# -- posting -------------------------------------------------------------------------------------
class Poster:
    """PostToConnection through an ``apigatewaymanagementapi`` client per endpoint."""

    def __init__(self, client_factory: Callable[[str], Any]) -> None:
        self._factory = client_factory
        self._clients: dict[str, Any] = {}

    def post(self, endpoint: str, connection_id: str, text: str) -> bool:
        """True if delivered; False if the connection is gone (410). Other errors raise."""
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self._factory(endpoint)
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=text.encode())
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "GoneException":
                return False
            raise


# -- the relay -----------------------------------------------------------------------------------
class Relay:
    """What ``$connect``, ``$disconnect`` and ``$default`` do; handlers only parse and call in."""

    def __init__(
        self,
        store: ConnectionStore,
        poster: Poster,
        input_rate: int = 50,
        clock: Callable[[], float] = time.monotonic,
        *,
        control_rate: int = CONTROL_RATE,
        control_window: float = CONTROL_WINDOW_SECONDS,
    ) -> None:
        self.store = store
        self.poster = poster
        self.input_rate = input_rate
        self.control_rate = control_rate
        self.control_window = control_window
        self._clock = clock
        # session -> (runner connection, when read): a warm instance skips the route read per
        # keystroke; a stale entry shows itself as a GoneException and is read again
        self._routes: dict[str, tuple[str, float]] = {}

    def _route(self, session: str, fresh: bool = False) -> str | None:
        cached = self._routes.get(session)
        if cached and not fresh and self._clock() - cached[1] < ROUTE_CACHE_SECONDS:
            return cached[0]
        runner = self.store.route(session)
        if runner is None:
            self._routes.pop(session, None)
        else:
            self._routes[session] = (runner, self._clock())
        return runner

    # $connect / $disconnect ------------------------------------------------------------------
    def connect(self, ident: Identity) -> None:
        if ident.role == "runner":
            self.store.add_runner(ident)
        elif ident.role == "browser" and ident.session_id:
            self.store.add_browser(ident)
        else:
            raise PermissionError("connection has no authorised role")

    def disconnect(self, ident: Identity, endpoint: str) -> None:
        old = self.store.remove(ident.connection_id) or {}
        if ident.role == "runner":
            self._sessions_lost(endpoint, ident.connection_id, old)
        elif ident.role == "browser" and ident.session_id:
            runner = self.store.route(ident.session_id)
            if runner:
                detach = fr.DetachFrame(sessionId=ident.session_id, connectionId=ident.connection_id)
                if not self.poster.post(endpoint, runner, fr.encode(detach)):
                    self._runner_gone(endpoint, runner, ident.session_id)

    def _sessions_lost(self, endpoint: str, runner: str, item: dict[str, Any]) -> None:
        """A runner connection is gone: unroute its sessions and tell their browsers to resume."""
        for sid in item.get("sessions", {}).get("SS", []):
            self.store.drop_route(sid, runner)
            for browser in self.store.browsers(sid):
                self._send(
                    endpoint,
                    browser,
                    fr.ErrorFrame(
                        sessionId=sid,
                        code="runner_gone",
                        message="the runner holding this terminal disconnected; send resume to reattach",
                    ),
                )

    # $default --------------------------------------------------------------------------------
    def message(self, ident: Identity, body: str | None, endpoint: str) -> None:
        if ident.role == "runner":
            self._from_runner(ident, body or "", endpoint)
        elif ident.role == "browser":
            self._from_browser(ident, body or "", endpoint)
        else:
            raise PermissionError("connection has no authorised role")

    def _from_browser(self, ident: Identity, body: str, endpoint: str) -> None:
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
            if (frame.taskId, frame.branch) != (ident.task_id, ident.branch):
                return self._refuse(
                    endpoint, ident, "not_granted", "the token does not grant that task or branch"
                )
        elif frame.sessionId != session:
            return self._refuse(
                endpoint, ident, "not_granted", "the token does not grant that session", session
            )
        if ident.read_only and isinstance(
            frame, fr.InputFrame | fr.ResizeFrame | fr.CloseFrame | fr.PushFrame
        ):
            return self._refuse(endpoint, ident, "read_only", "this connection is read-only", session)
        if isinstance(frame, fr.InputFrame) and not self.store.take_input_token(
            ident.connection_id, self.input_rate
        ):
            return self._refuse(
                endpoint, ident, "throttled", f"more than {self.input_rate} input frames a second", session
            )
        if isinstance(frame, fr.OpenFrame | fr.ResumeFrame) and not self.store.take_token(
            ident.connection_id, self.control_rate, kind="ctl", window=self.control_window
        ):
            return self._refuse(
                endpoint,
                ident,
                "throttled",
                f"more than {self.control_rate} open/resume frames in {self.control_window:g} s",
                session,
            )
        stamped = frame.model_copy(
            update={"connectionId": ident.connection_id, "readOnly": ident.read_only, "sessionId": session}
        )
        assert session is not None
        if isinstance(frame, fr.OpenFrame):
            return self._open(ident, session, stamped, endpoint)
        text = fr.encode(stamped)
        for fresh in (False, True):
            runner = self._route(session, fresh)
            if runner is not None and self.poster.post(endpoint, runner, text):
                return None
            if runner is not None:
                self._runner_gone(endpoint, runner, session)
        if isinstance(frame, fr.ResumeFrame):
            # the runner may be on its way back (its hello routes its sessions again): resume again later
            return self._refuse(
                endpoint,
                ident,
                "no_runner",
                "no runner holds this session right now; resume again shortly",
                session,
            )
        self._send(
            endpoint,
            ident.connection_id,
            fr.ExitFrame(sessionId=session, code=-1, reason="no runner holds this session"),
        )
        return None

    def _open(self, ident: Identity, session: str, frame: fr.OpenFrame, endpoint: str) -> None:
        for _ in range(3):
            runner = self.store.route(session)
            if runner is None and frame.readOnly:
                # a watcher attaches to a live session; it never makes a runner start one
                return self._refuse(endpoint, ident, "no_session", fr.NO_SESSION_READ_ONLY, session)
            if runner is None:
                runners = self.store.runners()
                if not runners:
                    return self._refuse(
                        endpoint, ident, "no_runner", "no runner is connected; try again later", session
                    )
                runner = self.store.claim_route(session, random.choice(runners))
            if self.poster.post(endpoint, runner, fr.encode(frame)):
                self._routes[session] = (runner, self._clock())
                return None
            self._runner_gone(endpoint, runner, session)
        return self._refuse(endpoint, ident, "no_runner", "no runner answered; try again later", session)

    def _runner_gone(self, endpoint: str, runner: str, session: str | None) -> None:
        logger.info("runner connection %s is gone; cleaning it", runner)
        old = self.store.remove(runner)
        self._routes = {k: v for k, v in self._routes.items() if v[0] != runner}
        if session:
            self.store.drop_route(session, runner)
        if old:
            # found out here before its $disconnect: the browsers of all its sessions hear it now
            self._sessions_lost(endpoint, runner, old)

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
            return None
        if isinstance(frame, fr.OpenedFrame):
            self.store.runner_holds(ident.connection_id, [frame.sessionId])
        elif isinstance(frame, fr.ExitFrame):
            self.store.runner_holds(ident.connection_id, [frame.sessionId], add=False)
            self.store.drop_route(frame.sessionId, ident.connection_id)
            self._routes.pop(frame.sessionId, None)
        session = getattr(frame, "sessionId", None)
        targets = list(frame.to) or (self.store.browsers(session) if session else [])
        text = fr.for_browser(frame)
        for target in targets:
            if not self.poster.post(endpoint, target, text):
                # clean exactly the id we posted to, and tell the runner it has one viewer less
                self.store.remove(target)
                if session:
                    detach = fr.DetachFrame(sessionId=session, connectionId=target)
                    self.poster.post(endpoint, ident.connection_id, fr.encode(detach))
        return None

    def _refuse(
        self, endpoint: str, ident: Identity, code: str, message: str, session: str | None = None
    ) -> None:
        logger.info("refused a frame from %s: %s", ident.connection_id, code)
        self._send(
            endpoint, ident.connection_id, fr.ErrorFrame(code=code, message=message, sessionId=session)
        )

    def _send(self, endpoint: str, connection_id: str, frame: Any) -> None:
        if not self.poster.post(endpoint, connection_id, fr.for_browser(frame)):
            self.store.remove(connection_id)


def relay_from_settings(settings: Any) -> Relay:
    """The relay a WebSocket function builds once per process from its WsSettings."""
    from shared import aws

    store = ConnectionStore(settings.dynamodb(), settings.connections_table, settings.connection_ttl_seconds)
    poster = Poster(
        lambda endpoint: aws.client(
            "apigatewaymanagementapi", region=settings.aws_region, endpoint_url=endpoint, read_timeout=10
        )
    )
    return Relay(
        store,
        poster,
        input_rate=settings.input_rate_per_second,
        control_rate=settings.control_rate_per_window,
    )
