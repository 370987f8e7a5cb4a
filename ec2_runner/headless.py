"""One headless run of an agent CLI for one task: the base every adapter builds on.

:class:`PtyAgent` gives the command its environment (without the runner's own credentials), checks
that it can run at all (prompt size, executable), drives it through :mod:`ec2_runner.ptydriver` and
turns what happened into an :class:`AgentResult`. By itself it judges a run by how it ended (stopped,
timed out, exit code) and nothing else: a CLI with known failure modes of its own (Kiro) brings
its rules in its own adapter (:mod:`ec2_runner.kiro`).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.ansi import Redactor
from ec2_runner.ptydriver import Asker, PtyRun, Watch, drive
from ec2_runner.reaping import run_to_end
from ec2_runner.sandbox import Sandbox
from shared.models import ErrorKind

logger = logging.getLogger(__name__)

MAX_PROMPT_BYTES = 120_000  # Linux refuses a single argv string over 128 KiB (MAX_ARG_STRLEN)

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
_PROMPT_ONLY = re.compile(r"^[>!\s]*$")
# a CLI's own conversation id as a row may carry it (``agentSessionId``): a UUID, a thread id; never
# an option (anyone who can write the table can write the row)
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def safe_session_id(value: object) -> str | None:
    """``value`` when it can name a CLI's conversation on a command line, else None (logged)."""
    if value is None:
        return None
    if isinstance(value, str) and _SESSION_ID.match(value):
        return value
    logger.warning("ignoring an agentSessionId that cannot be a conversation id: %r", str(value)[:40])
    return None


# one spawn of the command, with or without a watcher (the adapter's rules about its output) and a
# listener of its own (hears the plain text as it streams, beside the caller's ``on_output``)
class DriveOnce(Protocol):
    def __call__(self, watch: Watch | None, listen: Callable[[str], None] | None = None) -> PtyRun: ...


@dataclass
class Verdict:
    """An adapter's judgement of its run: ``ok`` or ``error`` of ``kind``; ``session_id`` is the CLI's
    own conversation id; ``keep_work`` says the work so far is worth keeping on the WIP ref (a turn
    limit); ``attempts`` counts the spawns the adapter made."""

    run: PtyRun
    ok: bool
    error: str | None
    kind: ErrorKind | None
    attempts: int = 1
    session_id: str | None = None
    keep_work: bool = False


LOGIN_CHECK_TIMEOUT = 20.0  # seconds a login check (``kiro-cli whoami``) may take


class LoginStatus(BaseModel):
    """Whether the agent can run a task unattended: ``logged_in`` None means not checked (an agent
    with no login check); ``detail`` is a sentence for a log line, a heartbeat and ``aipm doctor``."""

    model_config = ConfigDict(frozen=True)

    logged_in: bool | None
    detail: str

    @property
    def ready(self) -> bool:
        return self.logged_in is not False


class AgentResult(BaseModel):
    """How one headless run ended. ``output`` is plain text (ANSI stripped, secrets redacted)."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    exit_code: int | None = None
    error: str | None = None
    kind: ErrorKind | None = None  # the failure's errorKind (None when ok)
    output: str = ""
    duration: float = 0.0
    attempts: int = 1
    session_id: str | None = None  # the CLI's own conversation id (Claude Code's, Codex's thread)
    keep_work: bool = False  # a failure whose work so far is kept on the WIP ref (a turn limit)


def last_meaningful_line(output: str, noise: re.Pattern[str] | None = None) -> str:
    """The last line worth showing in an error: not blank, not a bare prompt, not ``noise`` (a line
    the CLI prints on every run, such as Kiro's credits)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line or _PROMPT_ONLY.match(line) or (noise is not None and noise.search(line)):
            continue
        return line[:300]
    return ""


def killed_by(run: PtyRun) -> str:
    """The error of a run whose process ended by a signal."""
    try:
        name = signal.Signals(run.signal).name if run.signal else "unknown"
    except ValueError:
        name = str(run.signal)
    return f"agent was killed by signal {name}"


def exit_kind(run: PtyRun) -> ErrorKind | None:
    """The ``errorKind`` of the verdict :func:`judge_exit` gives (None: the run succeeded): what
    stopped the run, else a failure of the agent's own (a non-zero exit, a signal)."""
    if run.error:
        return run.kind or ErrorKind.AGENT_EXIT
    return None if run.exit_code == 0 else ErrorKind.AGENT_EXIT


def judge_exit(run: PtyRun, noise: re.Pattern[str] | None = None) -> tuple[bool, str | None]:
    """A run judged by how it ended alone: stopped or timed out, killed, or its exit code (0 is ok)."""
    if run.error:
        return False, run.error
    code = run.exit_code
    if code == 0:
        return True, None
    if code is None:
        return False, killed_by(run)
    line = last_meaningful_line(run.output, noise)
    return False, f"agent failed (exit {code})" + (f": {line}" if line else "")


class PtyAgent:
    """An agent command run headless in a pty. Subclasses name the command; by default a run is
    judged by its exit code (:func:`judge_exit`); an adapter with rules of its own overrides
    :meth:`_attempts`. With a ``sandbox``, every spawn of the command runs inside it."""

    name = "agent"

    def __init__(
        self,
        settings: AgentSettings,
        argv: list[str],
        interactive: list[str],
        sandbox: Sandbox | None = None,
    ) -> None:
        if not argv:
            raise ValueError("agent command is empty")
        self.settings = settings
        self.argv = argv
        self.interactive = interactive
        self.sandbox = sandbox

    # -- public

    def interactive_argv(self, resume: bool, session_id: str | None = None) -> list[str]:
        """The command for a Refine terminal session, with the resume args when asked. Here the
        resume args alone (Kiro's ``--resume``: the last conversation in the task's folder);
        an adapter whose CLI resumes a named conversation uses ``session_id``."""
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

    def installed(self) -> str | None:
        """Where the agent's command is, or None when it cannot be run from here."""
        exe = self.argv[0]
        path = self.child_env().get("PATH")
        if os.sep in exe:
            return exe if os.access(exe, os.X_OK) else None
        return shutil.which(exe, path=path)

    def login_check_argv(self) -> list[str] | None:
        """The command whose exit 0 says the agent is logged in (``AGENT_LOGIN_CHECK``); None: this
        agent has no login to check."""
        check = self.settings.login_check
        return shlex.split(check) if check else None

    def login_status(self) -> LoginStatus:
        """Whether the agent is logged in, asked the agent itself (in the sandbox, with the agent's
        own environment, as a task's run would see it). What it prints is never logged: it may name
        an account."""
        argv = self.login_check_argv()
        if argv is None:
            return LoginStatus(logged_in=None, detail=f"{self.name} has no login check (AGENT_LOGIN_CHECK)")
        if self.installed() is None:
            return LoginStatus(logged_in=False, detail=f"agent command not found: {self.argv[0]}")
        shown = shlex.join(argv)
        env = self.child_env()
        with tempfile.TemporaryDirectory(prefix="aipm-login-check-") as cwd:
            try:
                if self.sandbox is None:
                    proc = _run_check(argv, Path(cwd), env)
                else:
                    with self.sandbox.run(argv, Path(cwd), env) as boxed:
                        proc = _run_check(boxed.argv, Path(cwd), boxed.env)
            except subprocess.TimeoutExpired:
                return LoginStatus(
                    logged_in=False, detail=f"`{shown}` did not answer within {LOGIN_CHECK_TIMEOUT:g} s"
                )
            except OSError as e:
                return LoginStatus(logged_in=False, detail=f"`{shown}` could not run: {e.strerror or e}")
        if proc.returncode == 0:
            return LoginStatus(logged_in=True, detail=f"logged in (`{shown}` exit 0)")
        return LoginStatus(
            logged_in=False,
            detail=f"not logged in (`{shown}` exit {proc.returncode}): {self.login_hint()}",
        )

    def login_hint(self) -> str:
        """What a person does about an agent that is not logged in."""
        return "log the agent in on this host as the runner's user, or give it its API key"

    def run(
        self,
        prompt: str,
        cwd: Path,
        *,
        timeout: float | None = None,
        on_output: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | str] | None = None,
        asker: Asker | None = None,
    ) -> AgentResult:
        """Run one task headless in ``cwd`` until the agent exits (or is stopped, or times out);
        the timeout covers every attempt the adapter makes. A question the adapter's rules hand to a
        person (``APPROVAL=escalate``) goes to ``asker``; without one it is refused."""
        started = time.monotonic()
        limit = self.settings.timeout if timeout is None else timeout
        deadline = started + limit
        env = self.child_env()
        redact = Redactor([v for k, v in env.items() if _SECRET_NAME.search(k)])

        def result(
            ok: bool,
            error: str | None,
            kind: ErrorKind | None,
            run: PtyRun | None = None,
            attempts: int = 1,
            session_id: str | None = None,
            keep_work: bool = False,
        ) -> AgentResult:
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
                kind=None if ok else kind or ErrorKind.AGENT_EXIT,
                output=run.output if run else "",
                duration=duration,
                attempts=attempts,
                session_id=session_id,
                keep_work=keep_work and not ok,
            )

        argv = self._argv_for(prompt)
        if len(prompt.encode()) > MAX_PROMPT_BYTES:
            return result(
                False,
                f"prompt too long for the agent's command line ({len(prompt.encode())} bytes)",
                ErrorKind.INVALID_TASK,
            )
        exe = argv[0]
        if not (shutil.which(exe, path=env.get("PATH")) if os.sep not in exe else os.access(exe, os.X_OK)):
            return result(
                False, f"agent command not found: {exe} (set AGENT_COMMAND)", ErrorKind.AGENT_UNAVAILABLE
            )

        def once(watch: Watch | None, listen: Callable[[str], None] | None = None) -> PtyRun:
            hear = on_output if listen is None else _both(listen, on_output)
            if self.sandbox is None:
                return drive_in(argv, env, watch, hear)
            with self.sandbox.run(argv, cwd, env) as boxed:
                return drive_in(boxed.argv, boxed.env, watch, hear)

        def drive_in(
            argv: list[str], env: dict[str, str], watch: Watch | None, hear: Callable[[str], None] | None
        ) -> PtyRun:
            return drive(
                argv,
                cwd,
                env,
                redact=redact,
                deadline=deadline,
                limit=limit,
                kill_grace=self.settings.kill_grace,
                on_output=hear,
                should_stop=should_stop,
                watch=watch,
                asker=asker,
            )

        logger.info("%s starting: %s in %s (timeout %.0f s)", self.name, exe, cwd, limit)
        v = self._attempts(once, on_output)
        return result(v.ok, v.error, v.kind, v.run, v.attempts, v.session_id, v.keep_work)

    # -- internals

    def _argv_for(self, prompt: str) -> list[str]:
        # a prompt that starts with '-' would be read as an option
        return [*self.argv, (" " + prompt) if prompt.startswith("-") else prompt]

    def _attempts(self, once: DriveOnce, on_output: Callable[[str], None] | None) -> Verdict:
        """Run the command and judge it. Here: once, by its exit."""
        run = once(None)
        ok, error = judge_exit(run)
        return Verdict(run, ok, error, exit_kind(run))


def _both(first: Callable[[str], None], then: Callable[[str], None] | None) -> Callable[[str], None]:
    def hear(text: str) -> None:
        first(text)
        if then is not None:
            then(text)

    return hear


def _run_check(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """A login check run to its end: no input (a check that asks for a login gets none), output
    captured and dropped, its whole process group killed at the timeout."""
    return run_to_end(argv, cwd=cwd, env=env, timeout=LOGIN_CHECK_TIMEOUT)
