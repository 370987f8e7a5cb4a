"""The sandbox's egress path: what the bridge and the allow-list proxy add to an agent's requests.

Everything runs for real on loopback: a small HTTP server stands in for the model API, an
``EgressProxy`` allow-lists it, and a client inside ``bwrap --unshare-net`` reaches it through the
bridge (``127.0.0.1`` in the namespace -> unix socket -> proxy -> the endpoint). The same client run
outside the sandbox, straight to the endpoint, is the baseline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ec2_runner.egress import EgressProxy, bridge_argv, proxy_env

BRIDGE_PORT = 3128
SANDBOX = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--die-with-parent"]
SANDBOX += ["--unshare-net", "--unshare-pid"]

# N requests, each on a fresh connection (through a CONNECT tunnel when a proxy is set, as an
# https client opens one), then N on one kept-open connection; prints the seconds of each
CLIENT = r"""
import http.client, json, os, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proxy = os.environ.get("HTTPS_PROXY")
def conn():
    if not proxy:
        return http.client.HTTPConnection(host, port, timeout=20)
    p = proxy.rsplit(":", 1)
    c = http.client.HTTPConnection(p[0].split("//")[1], int(p[1]), timeout=20)
    c.set_tunnel(host, port)
    return c
fresh, kept = [], []
for _ in range(n):
    t = time.perf_counter(); c = conn(); c.request("GET", "/v1/models"); c.getresponse().read(); c.close()
    fresh.append(time.perf_counter() - t)
c = conn()
for _ in range(n):
    t = time.perf_counter(); c.request("GET", "/v1/models"); c.getresponse().read()
    kept.append(time.perf_counter() - t)
print(json.dumps({"fresh": fresh, "kept": kept}))
"""


class _Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK wait

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"data": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done


def measure(requests: int = 50, startups: int = 10) -> dict[str, list[float]]:
    """Seconds per request (fresh connection, kept connection) via the sandbox's egress and direct,
    and seconds per sandbox start with and without the bridge."""
    if shutil.which("bwrap") is None:
        raise RuntimeError("bubblewrap (bwrap) is not installed; the egress bench needs it")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = int(server.server_address[1])
    folder = Path(tempfile.mkdtemp(prefix="egress-bench-", dir="/tmp"))
    proxy = EgressProxy([f"127.0.0.1:{port}"], folder / "egress.sock").start()
    try:
        client = [sys.executable, "-c", CLIENT, "127.0.0.1", str(port), str(requests)]
        direct = json.loads(_run(client).stdout)
        env = {"PATH": "/usr/bin:/bin", **proxy_env(BRIDGE_PORT)}
        via = json.loads(_run([*SANDBOX, *bridge_argv(proxy.socket_path, BRIDGE_PORT, client)], env).stdout)
        bare, bridged = [], []
        for _ in range(startups):
            t = time.perf_counter()
            _run([*SANDBOX, "true"])
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            _run([*SANDBOX, *bridge_argv(proxy.socket_path, BRIDGE_PORT, ["true"])])
            bridged.append(time.perf_counter() - t)
    finally:
        proxy.close()
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "via_fresh": via["fresh"],
        "via_kept": via["kept"],
        "direct_fresh": direct["fresh"],
        "direct_kept": direct["kept"],
        "start_bare": bare,
        "start_bridged": bridged,
    }
