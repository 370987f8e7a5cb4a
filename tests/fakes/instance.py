"""One EC2 instance in an Auto Scaling group, on loopback: its instance metadata service (IMDSv2
only, as the launch template sets ``HttpTokens: required``) and the group's Auto Scaling Query API
as far as an instance uses it (``CompleteLifecycleAction``), which moto does not have.

The test plays AWS: ``scale_in()`` puts the instance in ``Terminating:Wait`` under the group's
``EC2_INSTANCE_TERMINATING`` hook (IMDS ``autoscaling/target-lifecycle-state`` then reads
``Terminated``, as AWS documents), ``interrupt_spot()`` posts the two-minute Spot notice. A
``CompleteLifecycleAction`` is checked as AWS checks it: the group, the hook and the instance must
name a lifecycle action that waits, else a ``ValidationError`` ("No active Lifecycle Action found");
a valid one moves the instance on to ``Terminating:Proceed``. Every request is kept in ``requests``.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_XMLNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


@dataclass
class Seen:
    method: str
    path: str
    token_ok: bool | None = None  # IMDS reads: whether a valid session token came with it
    params: dict[str, str] = field(default_factory=dict)  # Auto Scaling calls: the form's fields
    signed: bool = False  # Auto Scaling calls: a SigV4 Authorization header


class InstanceTwin:
    """IMDS at ``metadata_url``, the Auto Scaling API at ``autoscaling_url`` (one loopback server)."""

    def __init__(self, group: str, hook: str, instance_id: str = "i-0123456789abcdef0") -> None:
        self.group, self.hook, self.instance_id = group, hook, instance_id
        self.lifecycle_state = "InService"
        self.spot_action: dict[str, str] | None = None
        self.requests: list[Seen] = []
        self.completed: list[dict[str, str]] = []
        self.on_complete: Callable[[], Any] | None = None  # called as a CompleteLifecycleAction arrives
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- what AWS does --------------------------------------------------------------------------
    def scale_in(self) -> None:
        with self._lock:
            self.lifecycle_state = "Terminating:Wait"

    def interrupt_spot(self, seconds: float = 120) -> None:
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        with self._lock:
            self.spot_action = {"action": "terminate", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}

    @property
    def target_lifecycle_state(self) -> str:
        return "Terminated" if self.lifecycle_state.startswith("Terminating") else self.lifecycle_state

    # -- the server -----------------------------------------------------------------------------
    @property
    def metadata_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def autoscaling_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/autoscaling"

    def __enter__(self) -> InstanceTwin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _metadata(self, path: str) -> str | None:
        with self._lock:
            return {
                "/latest/meta-data/instance-id": self.instance_id,
                "/latest/meta-data/autoscaling/target-lifecycle-state": self.target_lifecycle_state,
                "/latest/meta-data/spot/instance-action": json.dumps(self.spot_action)
                if self.spot_action
                else None,
            }.get(path)

    def _complete(self, params: dict[str, str]) -> tuple[int, str]:
        if self.on_complete is not None:
            self.on_complete()
        with self._lock:
            waiting = (
                self.lifecycle_state == "Terminating:Wait"
                and params.get("AutoScalingGroupName") == self.group
                and params.get("LifecycleHookName") == self.hook
                and params.get("InstanceId") == self.instance_id
            )
            if params.get("LifecycleActionResult") not in ("CONTINUE", "ABANDON"):
                return 400, _error("ValidationError", "LifecycleActionResult must be CONTINUE or ABANDON")
            if not waiting:
                found = params.get("InstanceId", "")
                message = f"No active Lifecycle Action found with instance ID {found}"
                return 400, _error("ValidationError", message)
            self.lifecycle_state = "Terminating:Proceed"
            self.completed.append(params)
        body = (
            f'<CompleteLifecycleActionResponse xmlns="{_XMLNS}"><CompleteLifecycleActionResult/>'
            f"<ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata>"
            "</CompleteLifecycleActionResponse>"
        )
        return 200, body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        twin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                twin.requests.append(Seen("PUT", self.path))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if self.path != "/latest/api/token":
                    return self._send(404, "Not Found")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._send(400, "Bad Request")
                token = secrets.token_urlsafe(24)
                twin._tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                ok = self.headers.get("X-aws-ec2-metadata-token", "") in twin._tokens
                twin.requests.append(Seen("GET", self.path, token_ok=ok))
                if not ok:  # IMDSv2 only: a read without a valid token is refused
                    return self._send(401, "Unauthorized")
                text = twin._metadata(self.path)
                if text is None:
                    return self._send(404, "Not Found")
                self._send(200, text)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                params = {k: v[0] for k, v in form.items()}
                signed = self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 ")
                twin.requests.append(Seen("POST", self.path, params=params, signed=signed))
                if not self.path.startswith("/autoscaling"):
                    return self._send(404, "Not Found")
                if not signed:
                    return self._send(403, _error("MissingAuthenticationToken", "Request is not signed"))
                if params.get("Action") != "CompleteLifecycleAction":
                    action = params.get("Action")
                    return self._send(400, _error("InvalidAction", f"{action} is not served here"))
                status, body = twin._complete(params)
                self._send(status, body, "text/xml")

        return Handler


def _error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{_XMLNS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>"
    )
