"""Agent adapters: run a coding agent headless for one task, or give the command for a terminal session.

Every adapter drives its command the same way: in a real pty (the Kiro CLI wants one), through
pexpect, reading the output as it streams and knowing the agent is done when its process ends.
The known ways a headless run goes wrong (a device login waiting for a person, a bad credential
that still exits 0, a tool-approval question, a hang) end as a failed :class:`AgentResult` with a
readable ``error``, never as a hang and never as a false success.

``AGENT=demo`` (or ``auto`` without ``kiro-cli`` on PATH) selects :class:`DemoAgent`, a clearly
labelled stand-in that edits a file from the task, so ``make demo`` shows a real diff.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Protocol

import pexpect
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

KIRO_COMMAND = "kiro-cli chat --no-interactive --trust-all-tools --wrap never"
KIRO_INTERACTIVE_COMMAND = "kiro-cli chat --wrap never"
DEMO_AGENT = Path(__file__).with_name("demo_agent.py")

POLL_SECONDS = 0.1  # how often should_stop and the deadlines are checked while the agent is quiet
TAIL_CHARS = 64 * 1024  # output kept for the result; the runner stores a shorter tail still
MAX_PROMPT_BYTES = 120_000  # Linux refuses a single argv string over 128 KiB (MAX_ARG_STRLEN)
PTY_ROWS, PTY_COLS = 50, 200
REDACTED = "[REDACTED]"
RETRY_NOTE = "\n[runner] the agent was having trouble responding; running it once more\n"

# environment kept for the child when AGENT_ENV_PASSTHROUGH names an explicit list
_BASE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TMPDIR",
    "TZ",
)
# names of the runner's own credentials: never inherited by an agent that runs arbitrary tools
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(^|_)API_?KEY$|ACCESS_KEY", re.I)


# ------------------------------------------------------------------------------------- settings


class AgentSettings(BaseSettings):
    """Which agent runs the tasks and how: read from the environment once, at start-up."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    agent: Literal["kiro", "command", "demo", "auto"] = Field(default="kiro", validation_alias="AGENT")
    command: str | None = Field(default=None, validation_alias="AGENT_COMMAND")
    interactive_command: str | None = Field(default=None, validation_alias="AGENT_INTERACTIVE_COMMAND")
    resume_args: str = Field(default="--resume", validation_alias="AGENT_RESUME_ARGS")
    timeout: float = Field(default=1800.0, gt=0, validation_alias="AGENT_TIMEOUT")
    login_timeout: float = Field(default=0.0, ge=0, validation_alias="AGENT_LOGIN_TIMEOUT")
    kill_grace: float = Field(default=5.0, ge=0, validation_alias="AGENT_KILL_GRACE")
    kiro_api_key: SecretStr | None = Field(default=None, validation_alias="KIRO_API_KEY")
    env_passthrough: Annotated[list[str] | None, NoDecode] = Field(
        default=None, validation_alias="AGENT_ENV_PASSTHROUGH"
    )

    @field_validator("agent", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("env_passthrough", mode="before")
    @classmethod
    def _split_names(cls, v: object) -> object:
        if isinstance(v, str):
            return [n.strip() for n in re.split(r"[,\s]+", v) if n.strip()]
        return v

    @field_validator("command", "interactive_command")
    @classmethod
    def _shell_words(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.strip():
                return None
            try:
                shlex.split(v)
            except ValueError as e:
                raise ValueError(f"not a valid command line: {e}") from e
        return v

    @model_validator(mode="after")
    def _command_needed(self) -> AgentSettings:
        if self.agent == "command" and not self.command:
            raise ValueError("AGENT=command needs AGENT_COMMAND (e.g. 'claude -p')")
        return self


def agent_env_names() -> list[str]:
    """The environment variables AgentSettings reads."""
    return [str(f.validation_alias) for f in AgentSettings.model_fields.values() if f.validation_alias]


class AgentResult(BaseModel):
    """How one headless run ended. ``output`` is plain text (ANSI stripped, secrets redacted)."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    exit_code: int | None = None
    error: str | None = None
    output: str = ""
    duration: float = 0.0
    attempts: int = 1


class Agent(Protocol):
    """What the runner needs from an agent."""

    def run(
        self,
        prompt: str,
        cwd: Path,
        *,
        timeout: float | None = None,
        on_output: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | str] | None = None,
    ) -> AgentResult:
        """Run one task headless in ``cwd`` until the agent exits (or is stopped, or times out)."""
        ...

    def interactive_argv(self, resume: bool) -> list[str]:
        """The command for a Refine terminal session, with the resume args when asked."""
        ...


# ------------------------------------------------------------------------------------- plain text

_ANSI = re.compile(
    r"""
    \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?     # OSC: titles, hyperlinks (ended by BEL or ST)
  | \x1b[PX^_][^\x1b]*(?:\x1b\\)?         # DCS, SOS, PM, APC strings
  | (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]      # CSI: colours, cursor moves, erases
  | \x1b[ -/]+[0-~]                       # nF: character set selection
  | \x1b[0-~]                             # Fp, Fe, Fs: save cursor, keypad modes, reset
    """,
    re.VERBOSE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CR_LF = re.compile(r"\r+\n")


def strip_ansi(text: str) -> str:
    """Plain text as a terminal would show it: escape sequences and control characters removed,
    line ends as ``\\n``, and a carriage return overwriting its line (spinners keep their last frame)."""
    text = _CR_LF.sub("\n", _ANSI.sub("", text))
    if "\r" in text:
        lines = []
        for line in text.split("\n"):
            if "\r" in line:
                frames = [f for f in line.split("\r") if f]
                line = frames[-1] if frames else ""
            lines.append(line)
        text = "\n".join(lines)
    return _CONTROL.sub("", text)


class _Redactor:
    """Replaces secret values in text."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.longest = max((len(s) for s in self.secrets), default=0)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return text


class _OutputCleaner:
    """Turns raw pty output into plain, redacted text a line at a time.

    Whole lines only, so an escape sequence or a secret split across two reads is still caught;
    a very long line without a newline is released in pieces so memory stays bounded.
    """

    MAX_PENDING = 8192

    def __init__(self, redact: _Redactor) -> None:
        self.redact = redact
        self.pending = ""

    def feed(self, raw: str) -> str:
        self.pending += raw
        cut = self.pending.rfind("\n") + 1
        if not cut and len(self.pending) > self.MAX_PENDING:
            # keep enough behind that a secret or an escape sequence on the boundary is not split
            cut = len(self.pending) - max(self.redact.longest, 64)
        if not cut:
            return ""
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        return self.redact(strip_ansi(ready))

    def peek(self) -> str:
        """The unfinished line, cleaned (a question waiting for an answer has no newline yet)."""
        return self.redact(strip_ansi(self.pending))

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return self.redact(strip_ansi(rest))


# ------------------------------------------------------------------------------------- failure rules

_LOGIN = re.compile(
    r"Open this URL:?\s*https?://\S*(?:device|user_code|awsapps\.com|signin|login|oauth|authorize)"
    r"|Confirm the following code in the browser"
    r"|^\s*Code:\s*[A-Z0-9]{4}-[A-Z0-9]{4}\b",
    re.MULTILINE | re.IGNORECASE,
)
_LOGGED_IN = re.compile(
    r"(?i)\b(?:logged in successfully|login (?:succeeded|successful)|successfully logged in)\b"
)
_AUTH_FAILED = re.compile(r"^\s*(?:error:\s*)?Authentication failed\.?\s*$", re.MULTILINE | re.IGNORECASE)
_APPROVAL = re.compile(r"Allow this action\?.*?\[y/n/t\]:", re.DOTALL)
_TOOL_NAME = re.compile(r"Using tool:\s*([A-Za-z0-9_.:@/-]+)")
_TROUBLE = re.compile(r"(?i)is having trouble responding")
_CREDITS = re.compile(r"\u25b8\s*Credits:")
_PROMPT_ONLY = re.compile(r"^[>!\s]*$")


@dataclass
class _Run:
    """What one spawn of the agent saw and how it ended."""

    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None  # set when the adapter itself decided the run failed
    login_seen: float | None = None
    logged_in: bool = False
    auth_failed: bool = False
    credits: bool = False
    trouble: bool = False
    tail: list[str] = field(default_factory=list)
    tail_len: int = 0

    def keep(self, text: str) -> None:
        self.tail.append(text)
        self.tail_len += len(text)
        self._trim()

    def keep_before(self, text: str) -> None:
        self.tail.insert(0, text)
        self.tail_len += len(text)
        self._trim()

    def _trim(self) -> None:
        while self.tail_len > TAIL_CHARS and len(self.tail) > 1:
            self.tail_len -= len(self.tail.pop(0))
        if self.tail_len > TAIL_CHARS:
            self.tail[0] = self.tail[0][-TAIL_CHARS:]
            self.tail_len = len(self.tail[0])

    @property
    def output(self) -> str:
        return "".join(self.tail)


def last_meaningful_line(output: str) -> str:
    """The last line worth showing in an error: not blank, not a bare prompt, not the credits line."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line or _PROMPT_ONLY.match(line) or _CREDITS.search(line):
            continue
        return line[:300]
    return ""


# ------------------------------------------------------------------------------------- process group


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in the group. A container's PID 1 may never reap
    orphans, so a zombie counts as gone."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def die_with_parent() -> None:
    """In the agent's child process: be killed if the runner dies (even by SIGKILL), so a crashed
    runner never leaves an agent working on a task that another runner is about to reclaim."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def kill_process_group(child: pexpect.spawn, grace: float) -> None:
    """Stop the agent and everything it started: SIGTERM to its process group, SIGKILL after the grace."""
    pgid = child.pid  # the pty child calls setsid(): it leads its own session and process group
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        child.isalive()  # reaps the leader once it exits
        if not _group_alive(pgid):
            break
        time.sleep(0.02)
    else:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            # again on every pass: a process the group forked while the last signal went out
            # would otherwise outlive it (seen as an orphaned agent helper under load)
            _signal_group(pgid, signal.SIGKILL)
            child.isalive()
            if not _group_alive(pgid):
                break
            time.sleep(0.02)
        else:
            logger.warning("agent process group %s still alive after SIGKILL", pgid)


# ------------------------------------------------------------------------------------- adapters


class PtyAgent:
    """An agent command driven through a pty. Subclasses name the command and read its exit codes."""

    name = "agent"
    exit_messages: dict[int, str] = {}

    def __init__(self, settings: AgentSettings, argv: list[str], interactive: list[str]) -> None:
        if not argv:
            raise ValueError("agent command is empty")
        self.settings = settings
        self.argv = argv
        self.interactive = interactive

    # -- public

    def interactive_argv(self, resume: bool) -> list[str]:
        """The command for a Refine terminal session, with the resume args when asked."""
        argv = list(self.interactive)
        if resume:
            argv += shlex.split(self.settings.resume_args)
        return argv

    def child_env(self) -> dict[str, str]:
        """The agent's environment: without the runner's own credentials, with ``KIRO_API_KEY``."""
        names = self.settings.env_passthrough
        if names is None:
            env = {k: v for k, v in os.environ.items() if not _SECRET_NAME.search(k)}
        else:
            env = {k: os.environ[k] for k in (*_BASE_ENV, *names) if k in os.environ}
        env.pop("KIRO_API_KEY", None)
        if self.settings.kiro_api_key is not None:
            env["KIRO_API_KEY"] = self.settings.kiro_api_key.get_secret_value()
        env.setdefault("TERM", "xterm-256color")
        env.setdefault("PATH", os.defpath)
        return env

    def run(
        self,
        prompt: str,
        cwd: Path,
        *,
        timeout: float | None = None,
        on_output: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | str] | None = None,
    ) -> AgentResult:
        """Run one task headless in ``cwd``; see :class:`Agent`. Retries once when the agent says it
        is having trouble responding. The timeout covers both attempts."""
        started = time.monotonic()
        limit = self.settings.timeout if timeout is None else timeout
        deadline = started + limit
        env = self.child_env()
        redact = _Redactor([v for k, v in env.items() if _SECRET_NAME.search(k)])

        def result(ok: bool, error: str | None, run: _Run | None = None, attempts: int = 1) -> AgentResult:
            duration = time.monotonic() - started
            error = redact(error) if error else None
            logger.info(
                "%s run ended: ok=%s exit=%s attempts=%d duration=%.2fs%s",
                self.name,
                ok,
                run.exit_code if run else None,
                attempts,
                duration,
                f" error={error!r}" if error else "",
            )
            return AgentResult(
                ok=ok,
                exit_code=run.exit_code if run else None,
                error=error,
                output=run.output if run else "",
                duration=duration,
                attempts=attempts,
            )

        argv = self._argv_for(prompt)
        if len(prompt.encode()) > MAX_PROMPT_BYTES:
            return result(
                False, f"prompt too long for the agent's command line ({len(prompt.encode())} bytes)"
            )
        exe = argv[0]
        if not (shutil.which(exe, path=env.get("PATH")) if os.sep not in exe else os.access(exe, os.X_OK)):
            return result(False, f"agent command not found: {exe} (set AGENT_COMMAND)")

        logger.info("%s starting: %s in %s (timeout %.0f s)", self.name, exe, cwd, limit)
        attempts = 0
        earlier = ""
        while True:
            attempts += 1
            run = self._spawn_and_watch(argv, cwd, env, redact, deadline, limit, on_output, should_stop)
            ok, error = self._judge(run)
            if not ok and run.trouble and run.error is None and attempts == 1:
                logger.warning("%s is having trouble responding; retrying once", self.name)
                earlier = run.output + RETRY_NOTE
                if on_output is not None:
                    on_output(RETRY_NOTE)
                continue
            if earlier:
                run.keep_before(earlier)
                if error and run.trouble:
                    error += " (retried once)"
            return result(ok, error, run, attempts)

    # -- internals

    def _argv_for(self, prompt: str) -> list[str]:
        # a prompt that starts with '-' would be read as an option
        return [*self.argv, (" " + prompt) if prompt.startswith("-") else prompt]

    def _judge(self, run: _Run) -> tuple[bool, str | None]:
        if run.error:
            return False, run.error
        if run.auth_failed and not run.credits:
            return False, "agent authentication failed (check KIRO_API_KEY)"
        code = run.exit_code
        stalled = run.trouble and not run.credits  # said it had trouble and never finished a turn
        if code == 0 and not stalled:
            return True, None
        if code is None:
            try:
                name = signal.Signals(run.signal).name if run.signal else "unknown"
            except ValueError:
                name = str(run.signal)
            return False, f"agent was killed by signal {name}"
        if code in self.exit_messages:
            return False, self.exit_messages[code]
        if stalled:
            return False, f"agent failed (exit {code}): agent is having trouble responding"
        line = last_meaningful_line(run.output)
        return False, f"agent failed (exit {code})" + (f": {line}" if line else "")

    def _spawn_and_watch(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        redact: _Redactor,
        deadline: float,
        limit: float,
        on_output: Callable[[str], None] | None,
        should_stop: Callable[[], bool | str] | None,
    ) -> _Run:
        run = _Run()
        try:
            child = pexpect.spawn(
                argv[0],
                argv[1:],
                cwd=str(cwd),
                env=env,
                encoding="utf-8",
                codec_errors="replace",
                dimensions=(PTY_ROWS, PTY_COLS),
                maxread=65536,
                echo=False,
                timeout=None,
                preexec_fn=die_with_parent,
            )
        except (pexpect.ExceptionPexpect, OSError) as e:
            run.error = f"could not start the agent ({argv[0]}): {e}"
            return run
        child.delaybeforesend = None
        child.delayafterclose = child.ptyproc.delayafterclose = 0  # we reap it ourselves; no fixed sleep
        cleaner = _OutputCleaner(redact)
        window = ""  # recent plain text, where the failure patterns are looked for
        anything = re.compile(r".+", re.DOTALL)

        def emit(text: str) -> None:
            nonlocal window
            if not text:
                return
            run.keep(text)
            window = (window + text)[-8192:]
            if on_output is not None:
                try:
                    on_output(text)
                except Exception:  # a broken listener must not break the run
                    logger.exception("on_output callback failed")

        def stop(error: str) -> None:
            run.error = error
            kill_process_group(child, self.settings.kill_grace)

        try:
            while True:
                now = time.monotonic()
                reason = should_stop() if should_stop is not None else False
                if reason:
                    detail = reason if isinstance(reason, str) else "stop requested"
                    stop(f"agent stopped: {detail}")
                    break
                if now >= deadline:
                    stop(f"agent timed out after {limit:g} s")
                    break
                if run.login_seen is not None and now - run.login_seen >= self.settings.login_timeout:
                    stop("agent is not logged in")
                    break
                wait = max(0.0, min(POLL_SECONDS, deadline - now))
                index = child.expect([pexpect.EOF, pexpect.TIMEOUT, anything], timeout=wait)
                if index == 2:
                    emit(cleaner.feed(child.after))
                elif index == 0:
                    emit(cleaner.feed(child.before or ""))
                    break
                if index != 1 and self._scan(run, window + cleaner.peek(), child):
                    break
                if not child.isalive():
                    # done = the agent's exit; something it started may still hold the pty open, so
                    # read what is left instead of waiting for an EOF that might never come
                    self._drain(child, cleaner, emit)
                    break
            emit(cleaner.flush())
        finally:
            self._finish(child, run)
        return run

    def _scan(self, run: _Run, text: str, child: pexpect.spawn) -> bool:
        """Look for the known failure modes in recent output. True when the run is over."""
        if _CREDITS.search(text):
            run.credits = True
        if _TROUBLE.search(text):
            run.trouble = True
        if _AUTH_FAILED.search(text):
            run.auth_failed = True
        if run.login_seen is None and not run.logged_in and _LOGIN.search(text):
            run.login_seen = time.monotonic()
            logger.warning("%s is asking for a device login", self.name)
            if self.settings.login_timeout <= 0:
                run.error = "agent is not logged in"
                kill_process_group(child, self.settings.kill_grace)
                return True
        elif run.login_seen is not None and _LOGGED_IN.search(text):
            run.login_seen = None
            run.logged_in = True
        question = _APPROVAL.search(text)
        if question:
            tools = _TOOL_NAME.findall(text[: question.start()])
            child.sendline("n")
            tool = f" '{tools[-1]}'" if tools else ""
            logger.warning("%s asked for approval to use a tool%s; answered no", self.name, tool)
            run.error = (
                f"agent asked for approval to use tool{tool}; run with --trust-all-tools or trust the tool"
            )
            kill_process_group(child, self.settings.kill_grace)
            return True
        return False

    @staticmethod
    def _drain(child: pexpect.spawn, cleaner: _OutputCleaner, emit: Callable[[str], None]) -> None:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            try:
                data = child.read_nonblocking(65536, timeout=0.05)
            except (pexpect.TIMEOUT, pexpect.EOF):
                break
            emit(cleaner.feed(data))

    def _finish(self, child: pexpect.spawn, run: _Run) -> None:
        """Collect the exit status and leave nothing of the agent running."""
        if child.isalive() or _group_alive(child.pid):
            kill_process_group(child, self.settings.kill_grace)
        try:
            child.close(force=True)
        except pexpect.ExceptionPexpect:
            logger.warning("could not close the agent's pty cleanly")
        run.exit_code = child.exitstatus
        run.signal = child.signalstatus


class KiroAgent(PtyAgent):
    """The Kiro CLI, headless: ``kiro-cli chat --no-interactive --trust-all-tools --wrap never <prompt>``."""

    name = "kiro"
    exit_messages = {
        3: "a required MCP server failed to start (exit 3)",
        4: "agent not found (exit 4): check --agent / .kiro/agents",
    }

    def __init__(self, settings: AgentSettings) -> None:
        argv = shlex.split(settings.command or KIRO_COMMAND)
        if settings.interactive_command:
            interactive = shlex.split(settings.interactive_command)
        elif settings.command:
            # the same binary, minus what makes it headless and unattended
            interactive = [a for a in argv if a not in ("--no-interactive", "--trust-all-tools")]
        else:
            interactive = shlex.split(KIRO_INTERACTIVE_COMMAND)
        super().__init__(settings, argv, interactive)


class CommandAgent(PtyAgent):
    """Any agent CLI that takes the prompt as its last argument: ``q chat --no-interactive``,
    ``claude -p``, ``codex exec``, ``aider --message``."""

    name = "command"

    def __init__(self, settings: AgentSettings) -> None:
        if not settings.command:
            raise ValueError("AGENT=command needs AGENT_COMMAND")
        argv = shlex.split(settings.command)
        interactive = shlex.split(settings.interactive_command) if settings.interactive_command else argv[:1]
        super().__init__(settings, argv, interactive)


class DemoAgent(PtyAgent):
    """A DEMO STAND-IN for ``make demo`` when ``kiro-cli`` is absent: ``ec2_runner/demo_agent.py``
    writes the task into ``TASKS.md``. It is no coding agent; it only shows the pipeline working."""

    name = "demo"
    exit_messages = KiroAgent.exit_messages

    def __init__(self, settings: AgentSettings) -> None:
        base = [sys.executable, str(DEMO_AGENT), "chat"]
        super().__init__(settings, [*base, "--no-interactive", "--trust-all-tools", "--wrap", "never"], base)


def make_agent(settings: AgentSettings) -> Agent:
    """The adapter ``AGENT`` names; ``auto`` picks Kiro when ``kiro-cli`` is on PATH, else the demo."""
    kind = settings.agent
    if kind == "auto":
        exe = shlex.split(settings.command)[0] if settings.command else "kiro-cli"
        kind = "kiro" if shutil.which(exe) else "demo"
        logger.info(
            "AGENT=auto: %s", f"using {exe}" if kind == "kiro" else f"{exe} not found, using the DEMO agent"
        )
    if kind == "kiro":
        return KiroAgent(settings)
    if kind == "command":
        return CommandAgent(settings)
    logger.warning("using the DEMO agent: a stand-in that writes the task into TASKS.md, not a coding agent")
    return DemoAgent(settings)


__all__ = [
    "Agent",
    "AgentResult",
    "AgentSettings",
    "CommandAgent",
    "DemoAgent",
    "KiroAgent",
    "PtyAgent",
    "kill_process_group",
    "last_meaningful_line",
    "make_agent",
    "strip_ansi",
]
