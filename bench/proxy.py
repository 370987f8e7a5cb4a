"""A tiny counting HTTP proxy in front of the moto server.

Every AWS client of a part under test is pointed at its own proxy (the endpoint URL is
configuration), so the requests that part sends can be counted honestly, by operation, from the
``X-Amz-Target`` header (the JSON protocols of DynamoDB, DynamoDB Streams and SQS) or the
``Action`` of a query-protocol body.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}

# what counts as a read of the table (billed read units); stream reads are free to Lambda in AWS
TABLE_READS = (
    "DynamoDB_20120810.GetItem",
    "DynamoDB_20120810.BatchGetItem",
    "DynamoDB_20120810.Query",
    "DynamoDB_20120810.Scan",
    "DynamoDB_20120810.TransactGetItems",
)


def operation(headers: object, body: bytes) -> str:
    """The AWS operation a request names."""
    target = headers.get("X-Amz-Target")  # type: ignore[attr-defined]
    if target:
        return str(target)
    if body and b"Action=" in body:
        action = parse_qs(body.decode(errors="replace")).get("Action", ["?"])[0]
        return f"query.{action}"
    return "other"


class CountingProxy:
    """Forwards every request to ``upstream`` and counts it by operation."""

    def __init__(self, upstream: str, name: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.name = name
        self.counts: Counter[str] = Counter()
        self.inflight: Counter[str] = Counter()  # requests sent upstream and not yet answered
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
            # headers and body go out in two writes: with Nagle's algorithm on, the body waits for
            # the client's delayed ACK of the headers, ~40 ms on every request through the proxy
            disable_nagle_algorithm = True
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                op = operation(self.headers, body)
                with proxy._lock:
                    proxy.counts[op] += 1
                    proxy.inflight[op] += 1
                try:
                    self._relay(body, op)
                finally:
                    with proxy._lock:
                        proxy.inflight[op] -= 1

            def _relay(self, body: bytes, op: str) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body:
                    headers["Content-Length"] = str(len(body))
                for attempt in range(2):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                    try:
                        self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                        resp = self.upstream.getresponse()
                        data = resp.read()
                        break
                    except (OSError, http.client.HTTPException):
                        self.upstream.close()
                        self.upstream = None
                        if attempt:
                            self.send_error(502)
                            return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() not in ("server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(data)
                    except OSError:  # the client went away (a runner the bench stopped)
                        self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hung up mid-request is not news here

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name=f"proxy-{self.name}", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def pending(self, suffix: str) -> int:
        """Requests of operations ending in ``suffix`` still waiting for an answer upstream."""
        with self._lock:
            return sum(v for k, v in self.inflight.items() if k.endswith(suffix))

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def table_reads(counts: Counter[str]) -> int:
    return sum(counts[op] for op in TABLE_READS)
