"""Shared pieces of the Refine terminal tests: the local gateway over a deployed connections table,
a runner's terminal service over real git, and a small browser client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ec2_runner.agents import AgentSettings, make_agent
from ec2_runner.gitops import GitWorkspace
from ec2_runner.terminal import GitCallables, SessionManager, TerminalSettings
from ec2_runner.ws_client import TerminalService
from local.deploy import deploy
from local.gateway import LocalGateway
from local.gitremote import ensure_bare_remote
from shared import frames as fr
from shared import tokens
from tests.conftest import FAKE_AGENT

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
def running_gateway(moto_endpoint: str, table: str, **extra: str) -> Iterator[LocalGateway]:
    gw = LocalGateway(gateway_env(moto_endpoint, table, **extra), port=0).start()
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
    **settings: Any,
) -> SessionManager:
    """A runner's session manager over real git in ``tmp``. ``resolve_delay`` makes the task lookup
    take as long as a table read over the network would."""
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
def running_runner(gw: LocalGateway, make: Callable[[], SessionManager], runner_id: str = "runner-1"):
    svc = TerminalService(gw.ws_url, RUNNER_SECRET, runner_id, make).start()
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

    async def open(self, timeout: float = 5.0, **kwargs: Any) -> fr.OpenedFrame:
        await self.send(fr.OpenFrame(**kwargs))
        opened = await self.wait_frame(fr.OpenedFrame, timeout)
        self.session_id = opened.sessionId
        return opened

    async def type(self, data: str) -> None:
        assert self.session_id
        await self.send(fr.InputFrame(sessionId=self.session_id, data=data))

    def _apply(self, frame: Any) -> None:
        if isinstance(frame, fr.OutputFrame):
            self.text += "".join(self.reasm.push(frame.seq, frame.data))
        elif isinstance(frame, fr.OpenedFrame):
            self.text += "".join(self.reasm.start(frame.nextSeq))
            self.frames.append(frame)
        else:
            if isinstance(frame, fr.ExitFrame):
                self.exited = frame
            self.frames.append(frame)

    async def recv_one(self, timeout: float) -> Any:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = fr.decode(raw, role="runner")
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
