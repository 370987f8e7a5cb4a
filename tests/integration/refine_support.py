"""Shared pieces of the Refine terminal tests: the local gateway over a deployed connections table,
a runner's terminal service over real git, and a small browser client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from ec2_runner.gitops import GitWorkspace
from ec2_runner.sandbox import Sandbox
from ec2_runner.terminal import SessionManager, TerminalSettings
from ec2_runner.terminal_worktrees import GitCallables
from ec2_runner.ws_client import RelayLinkSettings, TerminalService
from local.deploy import deploy
from local.gateway import LocalGateway
from local.gitremote import ensure_bare_remote
from shared import frames as fr
from shared import tokens
from tests.conftest import FAKE_AGENT, ROOT

PAGE_MODULE = ROOT / "web" / "aipm-terminal.js"
TOKEN_SECRET = "browser-token-secret-for-tests-0123456789"
RUNNER_SECRET = "runner-secret-for-tests-0123456789abcdef"
SHELL = ["/bin/bash", "--norc", "--noprofile"]
SHELL_ENV = {
    "PATH": "/usr/bin:/bin",
    "TERM": "xterm-256color",
    "PS1": "$ ",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
}


def connections_table(moto_endpoint: str) -> str:
    """The connections table as template.yaml defines it, under a stack of its own."""
    res = deploy(moto_endpoint, "us-east-1", stack_name=f"r{uuid.uuid4().hex[:10]}")
    assert res.connections_table
    return res.connections_table


def gateway_env(moto_endpoint: str, table: str, **extra: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "CONNECTIONS_TABLE": table,
        "TOKEN_SECRET": TOKEN_SECRET,
        "RUNNER_SECRET": RUNNER_SECRET,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        **extra,
    }


@contextlib.contextmanager
def running_gateway(
    moto_endpoint: str, table: str, limits: dict[str, Any] | None = None, **extra: str
) -> Iterator[LocalGateway]:
    """A started gateway; ``limits`` shortens API Gateway's (``idle_timeout=``, ...)."""
    gw = LocalGateway(gateway_env(moto_endpoint, table, **extra), port=0, **(limits or {})).start()
    try:
        yield gw
    finally:
        gw.stop()


def workspace(tmp: Path) -> GitWorkspace:
    remote = ensure_bare_remote(tmp / "remote.git")
    return GitWorkspace(tmp / "clone", str(remote), tmp / "worktrees")


TASK_BRANCHES = {"T-1": "feature/one", "T-2": "feature/two"}


def session_manager(
    tmp: Path,
    argv: list[str] | Callable[[bool], list[str]] = SHELL,
    env: dict[str, str] | None = None,
    *,
    ws: GitWorkspace | None = None,
    resolve_delay: float = 0.0,
    sandbox: Sandbox | None = None,
    **settings: Any,
) -> SessionManager:
    """A runner's session manager over real git in ``tmp``. ``resolve_delay`` makes the task lookup
    take as long as a table read over the network would; with a ``sandbox``, agents run in it."""
    ws = ws or workspace(tmp)
    argv_for = argv if callable(argv) else (lambda resume: list(argv))

    def resolve_task(task_id: str) -> str:
        time.sleep(resolve_delay)
        return TASK_BRANCHES[task_id]

    return SessionManager(
        TerminalSettings(**settings),
        argv_for=argv_for,
        git=GitCallables.from_workspace(ws),
        resolve_task=resolve_task,
        env=env if env is not None else SHELL_ENV,
        sandbox=sandbox,
    )


KIRO_PROMPT = "\x1b[38;5;141m> \x1b[0m"


@dataclass
class FakeKiro:
    """The fake kiro-cli as a session's agent, with its own conversation home and start/end log."""

    tmp: Path

    def __post_init__(self) -> None:
        self.log = self.tmp / "fake-kiro.log"
        self.home = self.tmp / "kiro-home"
        agent = make_agent(
            AgentSettings(
                agent="kiro", command=f"{FAKE_AGENT / 'kiro-cli'} chat --no-interactive --trust-all-tools"
            )
        )
        self.argv_for: Callable[[bool], list[str]] = agent.interactive_argv
        self.env = {
            **SHELL_ENV,
            "PATH": f"{FAKE_AGENT}:/usr/bin:/bin",
            "FAKE_AGENT_LOG": str(self.log),
            "FAKE_KIRO_HOME": str(self.home),
        }

    def events(self, event: str = "start") -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in records if r["event"] == event]

    def run_headless(self, cwd: Path, prompt: str) -> None:
        """What the task's pipeline run does in its folder: one headless turn, remembered there."""
        argv = [str(FAKE_AGENT / "kiro-cli"), "chat", "--no-interactive", "--trust-all-tools", prompt]
        subprocess.run(argv, cwd=cwd, env=self.env, check=True, capture_output=True, timeout=30)


def process_running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def running_runner(
    gw: LocalGateway,
    make: Callable[[], SessionManager],
    runner_id: str = "runner-1",
    ws_url: str | None = None,
    secret: str | Callable[[], str | None] = RUNNER_SECRET,
    link: RelayLinkSettings | None = None,
):
    svc = TerminalService(ws_url or gw.ws_url, secret, runner_id, make, link).start()
    # wait until the relay knows the runner (its hello has been handled)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not gw.max_message_by_role.get("runner"):
        time.sleep(0.01)
    try:
        yield svc
    finally:
        svc.stop()


def browser_token(
    task: str | None = None, branch: str | None = None, read_only: bool = False, ttl: int = 300
) -> str:
    return tokens.mint(TOKEN_SECRET, sub="tester", task=task, branch=branch, read_only=read_only, ttl=ttl)


@dataclass
class Browser:
    """What a terminal page does: connect with a token, open, type, and apply output by seq."""

    ws: ClientConnection
    reasm: fr.SeqReassembler = field(default_factory=fr.SeqReassembler)
    text: str = ""
    frames: list[Any] = field(default_factory=list)
    session_id: str | None = None
    exited: fr.ExitFrame | None = None

    @classmethod
    async def connect(cls, url: str, token: str, **kwargs: Any) -> Browser:
        ws = await connect(f"{url}?token={token}", max_size=None, ping_interval=None, **kwargs)
        return cls(ws)

    async def send(self, frame: Any) -> None:
        await self.ws.send(fr.encode(frame) if not isinstance(frame, str) else frame)

    async def open(self, timeout: float = 20.0, **kwargs: Any) -> fr.OpenedFrame:
        # a first open clones the repository and makes a worktree: slow on a loaded machine
        await self.send(fr.OpenFrame(**kwargs))
        opened = await self.wait_frame(fr.OpenedFrame, timeout)
        self.session_id = opened.session_id
        return opened

    async def type(self, data: str) -> None:
        assert self.session_id
        await self.send(fr.InputFrame(session_id=self.session_id, data=data))

    def _apply(self, frame: Any) -> None:
        if isinstance(frame, fr.OutputFrame):
            self.text += "".join(self.reasm.push(frame.seq, frame.data))
        elif isinstance(frame, fr.OpenedFrame):
            self.text += "".join(self.reasm.start(frame.next_seq))
            self.frames.append(frame)
        else:
            if isinstance(frame, fr.ExitFrame):
                self.exited = frame
            self.frames.append(frame)

    async def recv_one(self, timeout: float) -> Any:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = fr.decode(raw, role="to_browser")
        self._apply(frame)
        return frame

    async def wait_for(self, predicate: Callable[[Browser], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"condition not met; text tail: {self.text[-300:]!r}; frames: {self.frames[-5:]}"
                )
            await self.recv_one(left)

    async def wait_text(self, needle: str, timeout: float = 5.0) -> None:
        await self.wait_for(lambda b: needle in b.text, timeout)

    async def wait_frame(self, kind: type, timeout: float = 5.0, **match: Any) -> Any:
        def found(b: Browser) -> bool:
            return any(
                isinstance(f, kind) and all(getattr(f, k) == v for k, v in match.items()) for f in b.frames
            )

        await self.wait_for(found, timeout)
        return next(
            f
            for f in self.frames
            if isinstance(f, kind) and all(getattr(f, k) == v for k, v in match.items())
        )

    async def close(self) -> None:
        await self.ws.close()


def error_codes(browser: Browser) -> list[str | None]:
    return [f.code for f in browser.frames if isinstance(f, fr.ErrorFrame)]


def loads(raw: str) -> dict[str, Any]:
    return json.loads(raw)


def ring_holds(sessions: SessionManager, needle: str) -> bool:
    """Whether some session's output ring holds ``needle`` (read from another thread: retry on a race)."""
    for _ in range(5):
        try:
            return any(needle in f.data for s in list(sessions.sessions.values()) for f in list(s.state.ring))
        except RuntimeError:
            continue
    return False


class Partition:
    """A TCP hop on loopback between a runner and the gateway that a test can cut, as a network
    partition would: ``cut`` drops the live connections and refuses new ones until ``heal``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="partition", daemon=True)

    def url(self, ws_url: str) -> str:
        """``ws_url`` (the gateway's) through this hop."""
        parts = urlsplit(ws_url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def __enter__(self) -> Partition:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def cut(self) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._set_cut(True), self._loop).result(5)

    def heal(self) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._set_cut(False), self._loop).result(5)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            for writer in list(self._writers):
                writer.transport.abort()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


# web/aipm-terminal.js (the page's module) under Node, with a small terminal stand-in of xterm's shape
# and Node's WebSocket client: events (status, terminal writes, connects, frames sent) go out as JSON
# lines, keystrokes come in on stdin
PAGE_HARNESS = r"""
import readline from "node:readline";
import { pathToFileURL } from "node:url";
const [modulePath, optionsJson] = process.argv.slice(1);
const { connect } = await import(pathToFileURL(modulePath).href);
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let onData = null;
const terminal = {
  cols: 100, rows: 30,
  write(data) { emit({ event: "write", data }); },
  onData(cb) { onData = cb; },
  onResize() {},
};
class CountingWebSocket extends WebSocket {
  constructor(url) { super(url); emit({ event: "connect" }); }
  send(data) { emit({ event: "send", frame: JSON.parse(data) }); super.send(data); }
}
const options = JSON.parse(optionsJson);
connect({
  ...options, terminal, WebSocket: CountingWebSocket,
  onState: (state, detail) => emit({ event: "status", id: "status", state, text: detail || state }),
});
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.type === "data" && onData) onData(cmd.data);
});
"""


class Page:
    """The terminal page's module (web/aipm-terminal.js) running under Node against a gateway;
    ``options`` go to its ``connect`` (``keepaliveSeconds``, ``readOnly``...)."""

    def __init__(self, ws_url: str, token: str, **options: Any) -> None:
        argv = [
            "node",
            "--experimental-websocket",
            "--no-warnings",
            "--input-type=module",
            "-e",
            PAGE_HARNESS,
            str(PAGE_MODULE),
            json.dumps({"url": ws_url, "token": token, **options}),
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def _of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind]

    @property
    def text(self) -> str:
        return "".join(e["data"] for e in self._of("write"))

    @property
    def status(self) -> str:
        shown = [e["text"] for e in self._of("status") if e["id"] == "status"]
        return shown[-1] if shown else ""

    @property
    def connects(self) -> int:
        return len(self._of("connect"))

    def sent(self, action: str) -> list[dict[str, Any]]:
        return [e["frame"] for e in self._of("send") if e["frame"].get("action") == action]

    def type(self, data: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"type": "data", "data": data}) + "\n")
        self.proc.stdin.flush()

    def wait(self, predicate: Callable[[Page], Any], timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"page: {what} not met; status {self.status!r}; text {self.text[-300:]!r}"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
