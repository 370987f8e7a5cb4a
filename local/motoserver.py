"""The embedded AWS: a moto server on loopback, over real HTTP."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

LOCAL_CREDENTIALS = {
    # moto accepts any credentials; these keep boto3 from looking for real ones
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def ensure_local_credentials() -> None:
    """Dummy credentials for the local stack, unless the environment already has some."""
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)


class AtomicDynamoDB:
    """WSGI middleware: one DynamoDB request at a time.

    In DynamoDB every conditional write is atomic; moto checks the condition and writes in two
    steps, so under concurrent requests two conditional claims of one row could both succeed
    (seen in the test suite). Serialising DynamoDB calls restores the guarantee the runners rely
    on. SQS and everything else stay concurrent (a long poll must not hold anyone up).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with self._lock:
            return list(self.app(environ, start_response))


class _AtomicMotoServer(ThreadedMotoServer):
    """moto's threaded server with DynamoDB's atomic conditional writes."""

    def _server_entry(self) -> None:
        app = AtomicDynamoDB(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoServer:
    """A moto server bound to 127.0.0.1; ``port=0`` picks a free port."""

    def __init__(self, port: int = 0) -> None:
        self._server = _AtomicMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        ensure_local_credentials()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
