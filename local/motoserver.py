"""The embedded AWS: a moto server on loopback, over real HTTP."""

from __future__ import annotations

import logging
import os

from moto.server import ThreadedMotoServer

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


class MotoServer:
    """A moto server bound to 127.0.0.1; ``port=0`` picks a free port."""

    def __init__(self, port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
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
