"""The agent sandbox's network: the model API only, never the instance metadata service.

A sandboxed agent runs in a network namespace of its own with nothing but ``lo``. Two parts give it
exactly the endpoints it is allowed:

- ``EgressProxy`` runs in the runner, on a unix socket the sandbox can see. It serves HTTP
  ``CONNECT host:port`` (and plain ``http://`` absolute-URI requests) only for the ``host:port``
  pairs of its allow list, resolves the name itself, refuses when any address is link-local or an
  EC2 instance-services address (the metadata service above all), even when allow-listed, and
  connects to the address it checked (so a second lookup cannot swap it).
- ``bridge_argv`` is the command line that runs inside the namespace: it listens on
  ``127.0.0.1:port``, forwards each connection to the proxy's unix socket from a forked child, and
  execs the agent's own command. ``proxy_env`` is the environment that points the agent's HTTP
  clients at it.

The bridge runs inside the agent's sandbox with a read-only view of the runner's Python, as
``python -I -S`` on this very file: isolated mode, so nothing from the agent's working directory or
environment is imported, and no site-packages. Its half of the module comes first and uses only
``os``, ``socket``, ``signal`` and ``sys`` before it execs the command, so it adds little to the
agent's start; the proxy's half, below it, is never read by the bridge.
"""

from __future__ import annotations

# The bridge comes first and imports little: it runs before the agent's command, inside the sandbox,
# and a Python start is most of what it costs. The proxy's imports follow it.
import os
import signal
import socket
import sys

# ----------------------------------------------------------------------------------------- the bridge


def proxy_env(port: int) -> dict[str, str]:
    """The environment that sends an agent's HTTP(S) clients through the bridge on ``127.0.0.1:port``.
    ``NO_PROXY`` is empty so nothing, loopback included, bypasses it."""
    url = f"http://127.0.0.1:{port}"
    env = {}
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def bridge_argv(socket_path: Path, port: int, argv: list[str]) -> list[str]:
    """The command line that, inside the sandbox's network namespace, listens on ``127.0.0.1:port``,
    forwards each connection to the proxy's ``socket_path``, and execs ``argv`` in its own process.
    It runs this file with the runner's interpreter in isolated mode without site-packages (no
    PYTHONPATH, no working directory on the path), using the standard library only."""
    if not argv:
        raise ValueError("bridge_argv needs the command to run inside the sandbox")
    here = os.path.realpath(__file__)
    return [
        sys.executable,
        "-I",
        "-S",
        "-B",
        here,
        "bridge",
        "--port",
        str(port),
        "--unix",
        str(socket_path),
        "--",
        *argv,
    ]


def _listen_on_loopback(port: int) -> socket.socket:
    _bring_loopback_up()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _bring_loopback_up() -> None:
    """``unshare --net`` leaves ``lo`` down (a bind to 127.0.0.1 still works, a connect does not);
    bubblewrap brings it up itself, so this only acts when it is down."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up, ifreq = 0x8913, 0x8914, 0x1, "16sH22x"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack(ifreq, fcntl.ioctl(s, siocgifflags, struct.pack(ifreq, b"lo", 0)))[1]
        if not flags & iff_up:
            fcntl.ioctl(s, siocsifflags, struct.pack(ifreq, b"lo", flags | iff_up))


def _die_with_parent(parent: int) -> None:
    """The forwarder is killed when the command (its parent, after the exec) ends, even without a pid
    namespace to take it down."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os._exit(0)


def _forward(listener: socket.socket, socket_path: str) -> None:
    """Each connection to ``listener`` spliced to a new connection to the proxy's unix socket, a
    thread per direction (an agent opens a handful; the proxy bounds how long they stay idle)."""
    import threading

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):  # a reset on either side ends both directions
                with _quiet():
                    s.shutdown(socket.SHUT_RDWR)

    def one(client: socket.socket) -> None:
        with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            try:
                upstream.connect(socket_path)
            except OSError:
                return  # the proxy is gone: the client sees its connection closed
            back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            back.start()
            pump(client, upstream)
            back.join()

    while True:
        client, _ = listener.accept()
        threading.Thread(target=one, args=(client,), daemon=True).start()


class _quiet:
    """``contextlib.suppress(OSError)`` without importing contextlib before the command starts."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return isinstance(kind, type) and issubclass(kind, OSError)


def _bridge(port: int, socket_path: str, argv: list[str]) -> int:
    try:
        listener = _listen_on_loopback(port)
    except OSError as e:
        print(
            f"egress bridge: cannot bring up loopback or listen on 127.0.0.1:{port} ({e.strerror}); "
            "is the port taken, or is this a namespace the bridge may not configure?",
            file=sys.stderr,
        )
        return 70
    parent = os.getpid()
    if os.fork() == 0:
        try:
            _die_with_parent(parent)
            os.setsid()  # off the command's terminal: its Ctrl-C or hang-up does not reach the forwarder
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)  # holds none of the command's pipes or its pty open
            _forward(listener, socket_path)
        finally:
            os._exit(0)
    listener.close()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"egress bridge: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 127


def _bridge_main(args: list[str]) -> int:
    """``--port P --unix S -- CMD...``, parsed by hand: argparse would cost the command's start-up."""
    usage = "usage: egress.py bridge --port PORT --unix SOCKET -- CMD [ARG...]"
    try:
        split = args.index("--")
        opts = dict(zip(args[:split:2], args[1:split:2], strict=True))
        port, path, argv = int(opts.pop("--port")), opts.pop("--unix"), args[split + 1 :]
    except (ValueError, KeyError):
        print(usage, file=sys.stderr)
        return 64
    if opts or not argv:
        print(usage, file=sys.stderr)
        return 64
    return _bridge(port, path, argv)


if __name__ == "__main__" and sys.argv[1:2] == ["bridge"]:
    sys.exit(_bridge_main(sys.argv[2:]))

# ------------------------------------------------------------------------------------------ the proxy

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

log = logging.getLogger("ec2_runner.egress")

# link-local is checked by ipaddress; these are named so the refusal can say what they are
_METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
# AWS puts its other instance services (DNS, NTP, the IPv6 metadata endpoint) in fd00:ec2::/32
_EC2_SERVICES = ipaddress.ip_network("fd00:ec2::/32")

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_STATUS_TEXT = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
}


class _Refused(Exception):
    """A request the proxy answers with ``status`` and a one-line ``reason``, then closes."""

    def __init__(self, status: int, reason: str, target: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.target = status, reason, target


# ------------------------------------------------------------------------------------ the allow list


def _host(text: str) -> str | None:
    """The canonical form of a host (lower-case name without a trailing dot, or an IP address in its
    compressed form), or None when ``text`` is neither."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    name = text.lower()
    name = name[:-1] if name.endswith(".") else name
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        return None
    return name


def _authority(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` split and canonicalised; None when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if ":" in host and not host.startswith("["):
        return None  # an IPv6 address must be bracketed, or its last group would read as the port
    canonical = _host(host)
    return (canonical, int(port)) if canonical else None


class AllowList:
    """``host:port`` entries, exact (``api.example.com:443``, ``127.0.0.1:8080``, ``[::1]:8080``) or a
    wildcard over subdomains (``*.example.com:443`` opens ``a.example.com``, not ``example.com``).
    The port is always required. Names compare case-blind and without a trailing dot."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._exact: set[tuple[str, int]] = set()
        self._suffixes: set[tuple[str, int]] = set()
        for entry in entries:
            wildcard = entry.startswith("*.")
            parsed = _authority(entry[2:] if wildcard else entry)
            if parsed is None or (wildcard and ("." not in parsed[0] or _is_ip(parsed[0]))):
                raise ValueError(
                    f"egress allow-list entry {entry!r} is not host:port or *.domain:port "
                    "(a port is required; IPv6 addresses go in brackets; a wildcard needs a domain "
                    "of at least two labels)"
                )
            (self._suffixes if wildcard else self._exact).add(parsed)

    def permits(self, host: str, port: int) -> bool:
        """Whether ``host:port`` (host already canonical, or a name with a trailing dot) is listed."""
        canonical = _host(host) or _host(f"[{host}]")
        if canonical is None:
            return False
        if (canonical, port) in self._exact:
            return True
        return not _is_ip(canonical) and any(
            canonical.endswith("." + suffix) and p == port for suffix, p in self._suffixes
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refusal_for(address: str) -> str | None:
    """Why ``address`` can never be reached from a sandbox, or None when it may be."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return "the EC2 instance metadata service"
    if ip.is_link_local:
        return "a link-local address"
    if ip in _EC2_SERVICES:
        return "an EC2 instance-services address"
    return None


class EgressProxy:
    """The allow-list HTTP proxy on a unix socket; see the module's docstring.

    ``start()`` returns once it listens (its own asyncio loop in a daemon thread); ``close()`` stops
    it, ends every open tunnel and removes the socket. Bounds: ``connect_timeout`` for the upstream
    connect, ``idle_timeout`` for a tunnel with no traffic either way, ``head_timeout`` and
    ``max_head_bytes`` for the request head, and ``max_tunnels`` open at once (beyond it: 503).
    ``task_id`` goes on every log line."""

    def __init__(
        self,
        allowed: list[str],
        socket_path: Path,
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        head_timeout: float = 10.0,
        max_head_bytes: int = 16384,
        max_tunnels: int = 64,
        task_id: str | None = None,
        socket_mode: int = 0o666,
    ) -> None:
        self.allow = AllowList(allowed)
        self.socket_path = Path(socket_path)
        if len(os.fsencode(self.socket_path)) > 107:
            raise ValueError(
                f"the egress socket path {str(self.socket_path)!r} is longer than a unix socket's 107 bytes; "
                "put it in a shorter folder"
            )
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.max_head_bytes = max_head_bytes
        self.max_tunnels = max_tunnels
        self.task_id = task_id
        self.socket_mode = socket_mode
        self._tunnels = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None

    @property
    def active_tunnels(self) -> int:
        """Tunnels connected (or connecting) upstream right now."""
        return self._tunnels

    def start(self) -> EgressProxy:
        """Listens on ``socket_path`` (a stale socket there is replaced) and returns once it does."""
        if self._thread is not None:
            raise RuntimeError("this egress proxy is already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="egress-proxy", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def close(self) -> None:
        """Stops listening, ends every open tunnel and removes the socket (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._loop = self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> EgressProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop thread

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        if self.task_id is not None:
            _set_task_context(self.task_id)  # copied into every task the loop runs
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._listen())
        except BaseException as e:  # handed to start()'s caller
            failure.append(e)
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                self.socket_path.unlink()  # a stale socket from a process that died
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=self.max_head_bytes
        )
        os.chmod(self.socket_path, self.socket_mode)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- one client

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        except _Refused as r:
            await self._refuse(writer, r)
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("egress: the proxy failed on one request", extra=self._extra())
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await self._read_head(reader)
        method, target, version, headers = _parse_head(head)
        if method == "CONNECT":
            authority = _authority(target)
            if authority is None:
                raise _Refused(400, "malformed request: CONNECT needs host:port with a port from 1 to 65535")
            upstream_head = b""
        else:
            authority, upstream_head = _origin_request(method, target, version, headers)
        host, port = authority
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self.allow.permits(host, port):
            raise _Refused(403, f"{shown} is not on the egress allow list", shown)
        addresses = await self._resolve(host, port, shown)
        if self._tunnels >= self.max_tunnels:
            raise _Refused(
                503, f"too many open tunnels (the cap is {self.max_tunnels}); close one and retry", shown
            )
        self._tunnels += 1
        try:
            up_reader, up_writer, address = await self._connect(addresses, shown)
            log.info(
                "egress allowed: %s via %s",
                shown,
                address,
                extra=self._extra(egress="allowed", egress_target=shown, egress_address=address),
            )
            try:
                if method == "CONNECT":
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    up_writer.write(upstream_head)
                await _splice(reader, writer, up_reader, up_writer, self.idle_timeout)
            finally:
                up_writer.close()
                with contextlib.suppress(Exception):
                    await up_writer.wait_closed()
        finally:
            self._tunnels -= 1

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(self.head_timeout):
                return await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise _Refused(408, f"no complete request within {self.head_timeout:g} s") from None
        except asyncio.LimitOverrunError:
            raise _Refused(400, f"malformed request: its head is over {self.max_head_bytes} bytes") from None
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise _Refused(
                    400, "malformed request: it ended before a blank line closed its head"
                ) from None
            raise

    async def _resolve(self, host: str, port: int, shown: str) -> list[tuple[int, str]]:
        """Every address of ``host`` (family, address); refused if any of them is never reachable."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            raise _Refused(502, f"could not resolve {host}: {e.strerror}", shown) from None
        addresses = list(
            dict.fromkeys((int(family), str(sockaddr[0])) for family, _, _, _, sockaddr in infos)
        )
        if not addresses:
            raise _Refused(502, f"could not resolve {host}: no address", shown)
        for _, address in addresses:
            why = refusal_for(address)
            if why is not None:
                what = f"is {why}" if _is_ip(host) else f"resolves to {address}, {why}"
                raise _Refused(403, f"{shown} {what}, which a sandbox never reaches", shown)
        return addresses

    async def _connect(
        self, addresses: list[tuple[int, str]], shown: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Connects to the first of the checked addresses that answers (never to a fresh lookup)."""
        port = int(shown.rsplit(":", 1)[1])
        last: OSError | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                for _, address in addresses:
                    try:
                        r, w = await asyncio.open_connection(address, port, limit=65536)
                        return r, w, address
                    except OSError as e:
                        last = e
        except TimeoutError:
            raise _Refused(
                504, f"connecting to {shown} timed out after {self.connect_timeout:g} s", shown
            ) from None
        reason = last.strerror if last and last.strerror else "no address answered"
        raise _Refused(502, f"could not connect to {shown}: {reason}", shown)

    async def _refuse(self, writer: asyncio.StreamWriter, r: _Refused) -> None:
        log.warning(
            "egress refused (%d): %s",
            r.status,
            r.reason,
            extra=self._extra(
                egress="refused", egress_status=r.status, egress_target=r.target, egress_reason=r.reason
            ),
        )
        body = f"egress refused: {r.reason}\n".encode()
        head = (
            f"HTTP/1.1 {r.status} {_STATUS_TEXT[r.status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(ConnectionError):
            writer.write(head + body)
            await writer.drain()

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"task_id": self.task_id, **fields}


def _set_task_context(task_id: str) -> None:
    """Puts ``task_id`` in the runner's logging context for this thread (imported late: the bridge
    side of this module must not need the runner's dependencies)."""
    from ec2_runner.logs import _task_id

    _task_id.set(task_id)


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """The request line's method, target and version, and the header fields; 400 when unreadable."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(400, "malformed request: its head is not ASCII") from None
    if any(c < " " and c not in "\r\n\t" or c == "\x7f" for c in text):
        raise _Refused(400, "malformed request: control characters in its head")
    lines = text[:-4].split("\r\n")
    if any("\r" in line or "\n" in line for line in lines):
        raise _Refused(400, "malformed request: a bare CR or LF in its head")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise _Refused(400, "malformed request: the request line is not METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1") or not method.isalpha() or not method.isupper():
        raise _Refused(400, "malformed request: the request line is not METHOD TARGET HTTP/1.x")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _Refused(400, "malformed request: a header line is not Name: value")
        headers.append((name, value.strip()))
    return method, target, version, headers


def _origin_request(
    method: str, target: str, version: str, headers: list[tuple[str, str]]
) -> tuple[tuple[str, int], bytes]:
    """A plain-HTTP proxy request (absolute URI): its host:port, and the head to send upstream (origin
    form, proxy and hop-by-hop headers dropped, ``Connection: close`` so one connection is one request)."""
    url = urlsplit(target)
    if url.scheme != "http" or not url.netloc or "@" in url.netloc:
        raise _Refused(
            400, "malformed request: only CONNECT host:port and http:// absolute-URI requests are served"
        )
    try:
        explicit_port = url.port
    except ValueError:
        explicit_port = None
        authority = None
    else:
        authority = _authority(url.netloc if explicit_port is not None else f"{url.netloc}:80")
    if authority is None:
        raise _Refused(400, "malformed request: the URL's host or port is not valid")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    lines = [f"{method} {path} {version}"]
    lines += [f"{n}: {v}" for n, v in headers if n.lower() not in _HOP_BY_HOP]
    lines.append("Connection: close")
    return authority, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    idle_timeout: float | None,
) -> None:
    """Copies both ways until both sides have finished (a half-close is passed on), or until neither
    side has sent anything for ``idle_timeout`` seconds."""
    loop = asyncio.get_running_loop()

    async def pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: asyncio.Timeout
    ) -> None:
        while data := await reader.read(65536):
            if idle_timeout is not None:
                deadline.reschedule(loop.time() + idle_timeout)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    # a reset on either side ends both directions (the task group cancels the other pump)
    try:
        async with asyncio.timeout(idle_timeout) as deadline, asyncio.TaskGroup() as group:
            group.create_task(pump(a_reader, b_writer, deadline))
            group.create_task(pump(b_reader, a_writer, deadline))
    except* (TimeoutError, OSError):
        pass


def _proxy(socket_path: Path, allowed: list[str]) -> int:
    with contextlib.suppress(ImportError):
        from ec2_runner import logs

        logs.configure(service="aipm-egress")
    proxy = EgressProxy(allowed, socket_path).start()
    print(f"egress proxy listening on {socket_path}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    proxy.close()
    return 0


def main(args: list[str] | None = None) -> int:
    """``proxy --unix S --allow HOST:PORT...``: the proxy on its own, until SIGTERM. (``bridge`` is
    handled before this module's proxy half is even imported; see ``bridge_argv``.)"""
    parser = argparse.ArgumentParser(prog="python -m ec2_runner.egress", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bridge", help="--port P --unix S -- CMD...: forward 127.0.0.1:P to S, then exec CMD")
    proxy = sub.add_parser("proxy", help="run the allow-list proxy on a unix socket until SIGTERM")
    proxy.add_argument("--unix", required=True, type=Path)
    proxy.add_argument("--allow", action="append", default=[], metavar="HOST:PORT")
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["bridge"]:
        return _bridge_main(argv[1:])
    opts = parser.parse_args(argv)
    try:
        return _proxy(opts.unix, opts.allow)
    except (ValueError, OSError) as e:
        print(f"egress proxy: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
