"""The agent sandbox's egress: an allow-list proxy on a unix socket and the in-namespace bridge.

Real processes in real network namespaces (bubblewrap's ``--unshare-net``, ``unshare --net``), loopback
only. The "model endpoint" is an HTTP server on the host's loopback, allow-listed as
``127.0.0.1:PORT``: loopback is not link-local, so the proxy may reach it, while a process inside
the namespace cannot reach it except through the bridge and the proxy.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ec2_runner.egress import AllowList, EgressProxy, bridge_argv, proxy_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
BRIDGE_PORT = 3128  # inside the namespace's own loopback; any free port there would do
BWRAP = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--die-with-parent"]
SANDBOX = [*BWRAP, "--unshare-net", "--unshare-pid"]


# ---------------------------------------------------------------------------------------- fixtures


class _ModelHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": dict(self.headers.items()), "body": body.decode()}
        )
        out = json.dumps({"reply": "hello from the model", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = _reply
    do_POST = _reply


@pytest.fixture
def model() -> Iterator[ThreadingHTTPServer]:
    """The stand-in model API on the host's loopback; ``.seen`` lists the requests it answered."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelHandler)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _port(server: ThreadingHTTPServer) -> int:
    return int(server.server_address[1])


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder for unix sockets (a socket's path is limited to 107 bytes; tmp_path can be longer)."""
    d = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start_proxy(sock_dir: Path) -> Iterator[Callable[..., EgressProxy]]:
    """Starts an ``EgressProxy`` on a socket in ``sock_dir``; every one started is closed afterwards."""
    started: list[EgressProxy] = []

    def start(allowed: list[str], **kwargs: object) -> EgressProxy:
        proxy = EgressProxy(allowed, sock_dir / f"p{len(started)}.sock", **kwargs)  # type: ignore[arg-type]
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


@pytest.fixture
def proxy(model: ThreadingHTTPServer, start_proxy: Callable[..., EgressProxy]) -> EgressProxy:
    """A proxy whose allow list is the model endpoint only."""
    return start_proxy([f"127.0.0.1:{_port(model)}"])


def _ask(sock_path: Path, data: bytes, *, shut: bool = False) -> bytes:
    """Sends ``data`` to the proxy's unix socket and reads until the proxy closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock_path))
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _body(reply: bytes) -> str:
    return reply.partition(b"\r\n\r\n")[2].decode()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def _sandboxed(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(SANDBOX if prefix is None else prefix), *argv],
        env=env or _env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


# A client run inside the sandbox: urllib honours HTTP_PROXY, so a plain http:// URL goes to the
# bridge as an absolute-URI request; http.client's set_tunnel makes a CONNECT tunnel first, as an
# https client does. Prints one JSON line per attempt.
CLIENT = r"""
import http.client, json, os, sys, urllib.request
out = {}
target = sys.argv[1]
host, port = target.rsplit(":", 1)
try:
    with urllib.request.urlopen(f"http://{target}/v1/messages?key=sekrit", data=b'{"q": 1}', timeout=20) as r:
        out["plain"] = [r.status, json.loads(r.read())]
except Exception as e:
    out["plain"] = ["error", f"{type(e).__name__}: {e}"]
try:
    proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
    c = http.client.HTTPConnection(proxy[0].split("//")[1], int(proxy[1]), timeout=20)
    c.set_tunnel(host, int(port))
    c.request("GET", "/v1/models")
    r = c.getresponse()
    out["connect"] = [r.status, json.loads(r.read())]
except Exception as e:
    out["connect"] = ["error", f"{type(e).__name__}: {e}"]
print(json.dumps(out))
"""

# Connects straight to a host:port (no proxy) and prints what happened.
DIRECT = r"""
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((host.strip("[]"), int(port)))
        print(target, "connected")
    except OSError as e:
        print(target, type(e).__name__, e.errno)
"""


def _client(proxy: EgressProxy, target: str, **kw: object) -> dict[str, list[object]]:
    argv = bridge_argv(proxy.socket_path, BRIDGE_PORT, [sys.executable, "-c", CLIENT, target])
    done = _sandboxed(argv, env=_env(**proxy_env(BRIDGE_PORT)), **kw)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def hosts_proxy(sock_dir: Path, model: ThreadingHTTPServer) -> Iterator[Callable[[list[str]], Path]]:
    """Runs ``python -m ec2_runner.egress proxy`` in a mount namespace whose /etc/hosts names
    ``ok.test`` and ``api.model.test`` as loopback, ``mixed.test`` as loopback *and* the metadata
    address, ``meta.test`` as the metadata address and ``ll6.test`` as an IPv6 link-local address; it
    shares the host's network, so it reaches the model endpoint. Returns the proxy's socket."""
    hosts = sock_dir / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n127.0.0.1 ok.test api.model.test model.test\n"
        "127.0.0.1 mixed.test\n169.254.169.254 mixed.test\n"
        "169.254.169.254 meta.test\nfe80::1 ll6.test\n"
    )
    procs: list[subprocess.Popen[str]] = []

    def start(allowed: list[str]) -> Path:
        sock = sock_dir / "hosts-proxy.sock"
        argv = [sys.executable, "-m", "ec2_runner.egress", "proxy", "--unix", str(sock)]
        for entry in allowed:
            argv += ["--allow", entry]
        proc = subprocess.Popen(
            [*BWRAP, "--ro-bind", str(hosts), "/etc/hosts", "--bind", str(sock_dir), str(sock_dir), *argv],
            env=_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the proxy prints one line once it listens
        assert "listening" in line, proc.stderr.read() if proc.stderr else line
        return sock

    yield start
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=30)


# ----------------------------------------------------------------------------- the allowed path


def test_a_sandboxed_client_reaches_the_allow_listed_model_endpoint_through_the_bridge(
    model: ThreadingHTTPServer, proxy: EgressProxy
) -> None:
    """Inside its own network namespace, a client using the bridge (the proxy environment and the
    bridge's 127.0.0.1 listener) gets the model endpoint's reply, by plain http and through CONNECT."""
    # when
    out = _client(proxy, f"127.0.0.1:{_port(model)}")
    # then
    assert out["plain"] == [200, {"reply": "hello from the model", "path": "/v1/messages?key=sekrit"}]
    assert out["connect"] == [200, {"reply": "hello from the model", "path": "/v1/models"}]
    plain = model.seen[0]  # type: ignore[attr-defined]
    assert plain["body"] == '{"q": 1}'
    assert not any(h.lower().startswith("proxy-") for h in plain["headers"])


def test_a_plain_http_request_goes_upstream_in_origin_form_without_proxy_headers(
    model: ThreadingHTTPServer, proxy: EgressProxy
) -> None:
    """An absolute-URI request reaches the endpoint as ``path?query`` with its body, the client's
    proxy credentials and hop-by-hop headers dropped, and ``Connection: close`` (one request per
    connection, so a connection never carries a second request past the allow list)."""
    # given
    target = f"127.0.0.1:{_port(model)}"
    request = (
        f"POST http://{target}/v1/x?a=1 HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic eHl6\r\n"
        "Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nX-Api-Key: k\r\n"
        "Content-Length: 5\r\n\r\nhello"
    )
    # when
    reply = _ask(proxy.socket_path, request.encode())
    # then
    assert _status(reply) == 200 and b"hello from the model" in reply
    (seen,) = model.seen  # type: ignore[attr-defined]
    assert seen["path"] == "/v1/x?a=1" and seen["body"] == "hello"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "proxy-authorization" not in headers and "proxy-connection" not in headers
    assert headers["connection"] == "close" and headers["x-api-key"] == "k"


HALF_CLOSE = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
s.sendall(f"CONNECT {sys.argv[2]} HTTP/1.1\r\n\r\n".encode())
assert s.recv(1024).startswith(b"HTTP/1.1 200")
s.sendall(b"x" * 100000)
s.shutdown(socket.SHUT_WR)
out = b""
while chunk := s.recv(65536):
    out += chunk
print(out.decode())
"""


def test_a_half_close_passes_through_the_bridge_and_the_proxy(
    start_proxy: Callable[..., EgressProxy],
) -> None:
    """A client that ends its upload with a half-close still gets the reply the endpoint sends only
    once it has seen the end of the upload."""
    # given: an endpoint that answers after the client's EOF
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        target = f"127.0.0.1:{server.getsockname()[1]}"

        def answer_after_eof() -> None:
            conn, _ = server.accept()
            with conn:
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
                conn.sendall(f"got {total} bytes".encode())

        threading.Thread(target=answer_after_eof, daemon=True).start()
        proxy = start_proxy([target])
        argv = bridge_argv(
            proxy.socket_path, BRIDGE_PORT, [sys.executable, "-c", HALF_CLOSE, str(BRIDGE_PORT), target]
        )
        # when
        done = _sandboxed(argv)
    # then
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "got 100000 bytes"


def test_the_bridge_hands_its_process_over_to_the_command(proxy: EgressProxy) -> None:
    """The command replaces the bridge's process (the same pid, so signals and the exit status are the
    command's own) and its output passes through untouched."""
    # given: a shell starts the bridge in the background and prints the bridge's pid
    bridged = bridge_argv(
        proxy.socket_path,
        BRIDGE_PORT,
        [sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(7)"],
    )
    script = " ".join(shlex.quote(a) for a in bridged) + ' & echo "$!"; wait "$!"'
    # when
    done = _sandboxed(["sh", "-c", script])
    # then
    assert done.returncode == 7, done.stderr
    bridge_pid, command_pid = done.stdout.split()
    assert bridge_pid == command_pid


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare --net without a user namespace needs root")
def test_the_bridge_brings_loopback_up_under_unshare_net_and_its_forwarder_dies_with_the_command(
    model: ThreadingHTTPServer, proxy: EgressProxy
) -> None:
    """``unshare --net`` leaves ``lo`` down and shares the pid namespace: the bridge brings ``lo`` up,
    the client still reaches the model, and the forked forwarder does not outlive the command."""
    # given: the command reports its children (the forwarder) before it runs the client
    report = (
        "import glob, subprocess, sys; kids = []\n"
        "for f in glob.glob('/proc/self/task/*/children'): kids += open(f).read().split()\n"
        "print('children', *kids, flush=True)\n"
        f"subprocess.run([sys.executable, '-c', {CLIENT!r}, sys.argv[1]], check=True)\n"
    )
    argv = bridge_argv(
        proxy.socket_path, BRIDGE_PORT, [sys.executable, "-c", report, f"127.0.0.1:{_port(model)}"]
    )
    # when
    done = _sandboxed(argv, env=_env(**proxy_env(BRIDGE_PORT)), prefix=["unshare", "--net"])
    # then
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1])["connect"][0] == 200
    forwarders = lines[0].split()[1:]
    assert len(forwarders) == 1
    assert _gone_eventually(int(forwarders[0]))


def test_a_ctrl_c_to_the_commands_process_group_leaves_the_forwarder_serving(
    model: ThreadingHTTPServer, proxy: EgressProxy
) -> None:
    """A Refine terminal's Ctrl-C goes to the whole foreground process group; the forwarder is not in
    it, so the agent keeps its network after an interrupted command."""
    # given: the command ignores SIGINT itself and sends it to its own process group
    interrupt = (
        "import os, signal, subprocess, sys\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "os.killpg(os.getpgrp(), signal.SIGINT)\n"
        f"subprocess.run([sys.executable, '-c', {CLIENT!r}, sys.argv[1]], check=True)\n"
    )
    argv = bridge_argv(
        proxy.socket_path, BRIDGE_PORT, [sys.executable, "-c", interrupt, f"127.0.0.1:{_port(model)}"]
    )
    # when
    done = _sandboxed(["setsid", "--wait", *argv], env=_env(**proxy_env(BRIDGE_PORT)))
    # then
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["connect"][0] == 200


def _gone_eventually(pid: int) -> bool:
    """True once ``pid`` no longer runs (gone or a zombie); the kill on the parent's death is async."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_the_bridge_says_so_when_its_port_is_taken(proxy: EgressProxy) -> None:
    """A second bridge on the same port inside one namespace stops with a sentence, not a traceback,
    and never runs its command."""
    # given: the outer bridge holds the port while the inner one starts
    inner = bridge_argv(proxy.socket_path, BRIDGE_PORT, ["sh", "-c", "echo inner ran"])
    # when
    done = _sandboxed(bridge_argv(proxy.socket_path, BRIDGE_PORT, inner))
    # then
    assert done.returncode == 70
    assert "inner ran" not in done.stdout
    assert done.stderr.startswith(
        f"egress bridge: cannot bring up loopback or listen on 127.0.0.1:{BRIDGE_PORT}"
    )
    assert "Traceback" not in done.stderr


def test_the_bridge_ignores_python_modules_planted_in_the_working_directory(
    model: ThreadingHTTPServer, proxy: EgressProxy, tmp_path: Path
) -> None:
    """The bridge runs in the agent's worktree, which the agent writes: a planted ``socket.py`` or
    ``asyncio.py`` there, or a PYTHONPATH pointing at it, is never imported by the bridge."""
    # given
    marker = tmp_path / "planted-ran"
    for name in ("socket", "asyncio", "selectors", "ec2_runner"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('{name}\\n')\n")
    env = _env(**proxy_env(BRIDGE_PORT))
    env["PYTHONPATH"] = str(tmp_path)
    argv = bridge_argv(proxy.socket_path, BRIDGE_PORT, ["/bin/sh", "-c", "echo bridged"])
    # when
    done = _sandboxed(argv, env=env, cwd=tmp_path)
    # then
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bridged"
    assert not marker.exists()


# ------------------------------------------------------------------------------- what is refused


def test_without_the_bridge_nothing_outside_the_namespace_is_reachable(
    model: ThreadingHTTPServer, proxy: EgressProxy
) -> None:
    """With the proxy environment but no bridge, or with no proxy at all, a sandboxed process reaches
    neither the model endpoint nor the metadata address nor any other address."""
    # when
    via_proxy = _sandboxed(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{_port(model)}"], env=_env(**proxy_env(BRIDGE_PORT))
    )
    direct = _sandboxed(
        [
            sys.executable,
            "-c",
            DIRECT,
            f"127.0.0.1:{_port(model)}",
            "169.254.169.254:80",
            "10.0.0.1:443",
            "[fd00:ec2::254]:80",
        ]
    )
    # then
    out = json.loads(via_proxy.stdout)
    assert out["plain"][0] == "error" and out["connect"][0] == "error"
    lines = direct.stdout.strip().splitlines()
    assert len(lines) == 4
    assert not [line for line in lines if line.endswith("connected")]
    assert model.seen == []  # type: ignore[attr-defined]


def test_a_connect_to_a_host_not_on_the_allow_list_is_refused_403_with_its_reason(
    model: ThreadingHTTPServer, proxy: EgressProxy
) -> None:
    """A host:port off the list, the listed host on another port, and the listed port under another
    name are each refused 403 with a one-line reason; the model never sees them."""
    # given
    other = ThreadingHTTPServer(("127.0.0.1", 0), _ModelHandler)
    other.seen = []  # type: ignore[attr-defined]
    try:
        for target in (f"127.0.0.1:{_port(other)}", f"localhost:{_port(model)}", "example.com:443"):
            # when
            reply = _ask(proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            # then
            assert _status(reply) == 403, reply
            assert _body(reply) == f"egress refused: {target} is not on the egress allow list\n"
    finally:
        other.server_close()
    # and through the sandbox, as the agent would meet it
    out = _client(proxy, "127.0.0.2:443")
    assert out["connect"][0] == "error" and "403" in str(out["connect"][1])
    assert model.seen == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("169.254.169.254:80", "the EC2 instance metadata service"),
        ("[fd00:ec2::254]:80", "the EC2 instance metadata service"),
        ("[::ffff:169.254.169.254]:80", "the EC2 instance metadata service"),
        ("169.254.170.2:80", "a link-local address"),
        ("[fe80::1]:443", "a link-local address"),
    ],
)
def test_the_metadata_service_and_link_local_addresses_are_refused_even_when_allow_listed(
    start_proxy: Callable[..., EgressProxy], target: str, kind: str
) -> None:
    """An allow-list entry cannot open the metadata service or any link-local address: 403, by CONNECT
    and by a plain http:// request alike."""
    # given
    proxy = start_proxy([target])
    # when
    connect = _ask(proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    plain = _ask(
        proxy.socket_path, f"GET http://{target}/latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    # then
    for reply in (connect, plain):
        assert _status(reply) == 403, reply
        assert kind in _body(reply)
        assert _body(reply).count("\n") == 1


def test_a_listed_name_that_resolves_to_a_link_local_address_is_refused(
    model: ThreadingHTTPServer, hosts_proxy: Callable[[list[str]], Path]
) -> None:
    """The proxy resolves a listed name itself and refuses it when any address is link-local or the
    metadata service, even if another address is fine; a name resolving to loopback only goes through."""
    # given
    port = _port(model)
    sock = hosts_proxy([f"{name}:{port}" for name in ("ok.test", "mixed.test", "meta.test", "ll6.test")])
    # when
    replies = {
        name: _ask(sock, f"CONNECT {name}:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n".encode(), shut=True)
        for name in ("ok.test", "mixed.test", "meta.test", "ll6.test")
    }
    # then
    assert _status(replies["ok.test"]) == 200
    assert b"hello from the model" in replies["ok.test"]
    assert _status(replies["mixed.test"]) == 403
    assert "resolves to 169.254.169.254, the EC2 instance metadata service" in _body(replies["mixed.test"])
    assert _status(replies["meta.test"]) == 403
    assert _status(replies["ll6.test"]) == 403
    assert "fe80::1, a link-local address" in _body(replies["ll6.test"])
    assert len(model.seen) == 1  # type: ignore[attr-defined]


def test_a_wildcard_entry_opens_subdomains_on_its_port_only(
    model: ThreadingHTTPServer, hosts_proxy: Callable[[list[str]], Path]
) -> None:
    """``*.model.test:PORT`` opens ``api.model.test:PORT``, not ``model.test`` itself nor another port."""
    # given
    port = _port(model)
    sock = hosts_proxy([f"*.model.test:{port}"])
    # when
    ok = _ask(
        sock, f"CONNECT api.model.test:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n".encode(), shut=True
    )
    bare = _ask(sock, f"CONNECT model.test:{port} HTTP/1.1\r\n\r\n".encode())
    other_port = _ask(sock, f"CONNECT api.model.test:{port + 1} HTTP/1.1\r\n\r\n".encode())
    # then
    assert _status(ok) == 200 and b"hello from the model" in ok
    assert _status(bare) == 403
    assert _status(other_port) == 403


def test_the_allow_list_matches_names_and_addresses_exactly() -> None:
    """Names compare case-blind and without a trailing dot; an IPv6 entry is bracketed; a wildcard
    needs at least one more label; every entry names its port."""
    allow = AllowList(["API.Example.com:443", "*.models.example:8443", "[::1]:8080", "127.0.0.1:9"])
    assert allow.permits("api.example.com.", 443)
    assert not allow.permits("api.example.com", 80)
    assert not allow.permits("example.com", 443)
    assert allow.permits("eu.models.example", 8443)
    assert allow.permits("a.b.models.example", 8443)
    assert not allow.permits("models.example", 8443)
    assert not allow.permits("evilmodels.example", 8443)
    assert allow.permits("::1", 8080)
    assert allow.permits("127.0.0.1", 9)
    assert not allow.permits("127.0.0.01", 9)


def test_a_socket_path_too_long_for_a_unix_socket_is_refused_at_construction(sock_dir: Path) -> None:
    """The kernel's 107-byte limit is named before anything listens, with what to do about it."""
    with pytest.raises(ValueError, match="shorter folder"):
        EgressProxy(["127.0.0.1:9"], sock_dir / ("x" * 120) / "egress.sock")


@pytest.mark.parametrize(
    "entry",
    [
        "api.example.com",
        "*:443",
        "*.com",
        "api.example.com:0",
        "[::1]",
        "http://api.example.com:443",
        "a b:1",
        "::1:80",
        "api.example.com:http",
    ],
)
def test_an_allow_list_entry_without_a_port_or_otherwise_unclear_is_refused_at_start(entry: str) -> None:
    """A bad entry fails at construction with a sentence naming it, never silently opening anything."""
    with pytest.raises(ValueError, match="egress allow-list entry") as e:
        AllowList([entry])
    assert repr(entry) in str(e.value)


# ------------------------------------------------------------------------------ bounds and abuse


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"hello\r\n\r\n",
        b"CONNECT\r\n\r\n",
        b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:80 SPDY/3\r\n\r\n",
        b"CONNECT 127.0.0.1:80 HTTP/1.1 extra\r\n\r\n",
        b"CONNECT bad_host\x1b[2J:80 HTTP/1.1\r\n\r\n",
        b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET https://api.example.com/ HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nno colon here\r\n\r\n",
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    ],
)
def test_a_malformed_request_gets_400_and_the_connection_closes(
    proxy: EgressProxy, request_bytes: bytes
) -> None:
    """A request the proxy cannot read is answered 400 with a one-line reason, then closed (``_ask``
    returns only once the proxy closes)."""
    reply = _ask(proxy.socket_path, request_bytes)
    assert _status(reply) == 400, reply
    assert _body(reply).startswith("egress refused: malformed request") and _body(reply).count("\n") == 1


def test_the_proxy_keeps_serving_after_bad_clients(
    model: ThreadingHTTPServer, start_proxy: Callable[..., EgressProxy]
) -> None:
    """Clients that hang up mid-request, send garbage, say nothing until the head timeout, or reset
    an open tunnel leave the proxy serving the next good client."""
    # given
    target = f"127.0.0.1:{_port(model)}"
    proxy = start_proxy([target], head_timeout=0.2)
    path = str(proxy.socket_path)
    with socket.socket(socket.AF_UNIX) as s:  # hangs up mid-head
        s.connect(path)
        s.sendall(b"CONNECT 127.0.")
    assert _status(_ask(proxy.socket_path, b"\x00\xff" * 100 + b"\r\n\r\n")) == 400
    silent = _ask(proxy.socket_path, b"")  # says nothing: closed after the head timeout
    assert _status(silent) == 408
    with socket.socket(socket.AF_UNIX) as s:  # opens a tunnel, then resets it
        s.connect(path)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(1024).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # when
    good = _ask(
        proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\nGET /again HTTP/1.0\r\n\r\n".encode(), shut=True
    )
    # then
    assert _status(good) == 200 and b'"/again"' in good


def test_tunnels_beyond_the_cap_are_refused_503_and_a_closed_one_frees_its_slot(
    model: ThreadingHTTPServer, start_proxy: Callable[..., EgressProxy]
) -> None:
    """With ``max_tunnels=1`` a second tunnel is refused 503 while the first is open; once the first
    closes, a new one goes through."""
    # given
    target = f"127.0.0.1:{_port(model)}"
    proxy = start_proxy([target], max_tunnels=1)
    first = socket.socket(socket.AF_UNIX)
    first.settimeout(30)
    first.connect(str(proxy.socket_path))
    first.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert first.recv(1024).startswith(b"HTTP/1.1 200")
    # when
    second = _ask(proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    first.close()
    assert _until(lambda: proxy.active_tunnels == 0)
    third = _ask(
        proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n".encode(), shut=True
    )
    # then
    assert _status(second) == 503 and "cap is 1" in _body(second)
    assert _status(third) == 200


def _until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 20
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_idle_tunnel_is_closed_and_a_busy_one_is_not(
    model: ThreadingHTTPServer, start_proxy: Callable[..., EgressProxy]
) -> None:
    """A tunnel with no traffic either way for ``idle_timeout`` is closed by the proxy."""
    # given
    target = f"127.0.0.1:{_port(model)}"
    proxy = start_proxy([target], idle_timeout=0.3)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(proxy.socket_path))
        s.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(1024).startswith(b"HTTP/1.1 200")
        # when: nothing more is sent
        # then: the proxy closes (recv returns b"" rather than timing out after 30 s)
        assert s.recv(1024) == b""
    assert _until(lambda: proxy.active_tunnels == 0)


def test_an_unreachable_upstream_is_answered_502(start_proxy: Callable[..., EgressProxy]) -> None:
    """An allowed endpoint that refuses the connection gives 502 with the reason, not a hang."""
    # given: a port that was free a moment ago
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = start_proxy([f"127.0.0.1:{port}"])
    # when
    reply = _ask(proxy.socket_path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    # then
    assert _status(reply) == 502
    assert f"could not connect to 127.0.0.1:{port}" in _body(reply)


def test_each_refusal_and_each_tunnel_logs_one_structured_line_without_secrets(
    model: ThreadingHTTPServer, start_proxy: Callable[..., EgressProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """One line per allowed tunnel and per refusal, with its target, status and reason as fields; no
    query string, path or header value of the request ever reaches the log."""
    # given
    target = f"127.0.0.1:{_port(model)}"
    proxy = start_proxy([target], task_id="task-42")
    caplog.set_level(logging.INFO, logger="ec2_runner.egress")
    # when
    _ask(
        proxy.socket_path,
        f"GET http://{target}/v1/x?key=sekrit HTTP/1.1\r\nHost: {target}\r\n"
        "Authorization: Bearer tok-sekrit\r\nConnection: close\r\n\r\n".encode(),
    )
    _ask(proxy.socket_path, b"GET http://127.0.0.9:80/p?key=sekrit HTTP/1.1\r\nAuthorization: sekrit\r\n\r\n")
    _ask(proxy.socket_path, b"sekrit garbage\r\n\r\n")
    # then
    records = [r for r in caplog.records if r.name == "ec2_runner.egress" and hasattr(r, "egress")]
    assert [r.egress for r in records] == ["allowed", "refused", "refused"]  # type: ignore[attr-defined]
    allowed, off_list, garbage = records
    assert allowed.egress_target == target and allowed.egress_address == "127.0.0.1"  # type: ignore[attr-defined]
    assert off_list.egress_target == "127.0.0.9:80" and off_list.egress_status == 403  # type: ignore[attr-defined]
    assert garbage.egress_status == 400 and garbage.egress_target is None  # type: ignore[attr-defined]
    assert {r.task_id for r in records} == {"task-42"}  # type: ignore[attr-defined]
    for r in records:
        assert "sekrit" not in r.getMessage() and "sekrit" not in repr(vars(r))
