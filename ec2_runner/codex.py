"""The Codex CLI adapter (``AGENT=codex``): ``codex exec --json``.

The run is judged from its JSON events: ``thread.started {thread_id}`` (the session id),
``item.completed`` (commands, file changes, the agent's messages), then ``turn.completed`` or
``turn.failed {error}``. Traps it handles, each seen on this machine: with the model API not
listening Codex never gives up ("Reconnecting... waiting for network"), so the adapter stops it after
``AGENT_API_UNREACHABLE_SECONDS``; a tool call its policy rejects (an escalation under
``approval_policy = never``, a command its safety check refuses) is told only in a log line on
stderr while the turn still ends ``turn.completed`` with exit 0; ``codex exec`` has no turn limit, so
the adapter counts the model's tool calls against ``AGENT_MAX_TURNS``. Update checks, analytics and
the plugin sync (which looks up api.github.com) are off. With ``OPENAI_BASE_URL`` the adapter sets a
model provider of its own (Responses API) on the command line; otherwise ``CODEX_HOME``'s config
decides. ``OPENAI_API_KEY`` goes to this CLI only. Commands run without Codex's own sandbox: the
runner's (``AGENT_SANDBOX``) is the sandbox.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.headless import Verdict, safe_session_id
from ec2_runner.ptydriver import PtyRun, Stop
from ec2_runner.sandbox import Sandbox
from ec2_runner.stream_agents import StreamAgent, StreamRules, quoted_toml
from shared.models import ErrorKind

CODEX_FLAGS = [
    "exec",
    "--json",
    "--dangerously-bypass-approvals-and-sandbox",
    *("--disable", "plugins", "--disable", "remote_plugin", "--disable", "apps"),
    *("-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false"),
    *("-c", 'approval_policy="never"'),
]
PROVIDER = "aipm"
TOOL_ITEMS = ("command_execution", "file_change", "mcp_tool_call", "web_search")
RECONNECTING = re.compile(r"(?i)reconnecting|waiting for network|connection failed|error sending request")
REJECTED = re.compile(
    r"codex_core::tools::router: error=(?P<why>.*?(?:approval policy is never|rejected|not permitted).*)$",
    re.IGNORECASE,
)


class CodexRules(StreamRules):
    """Codex's events: the thread id, the tool calls, the end of the turn, the rejections it logs."""

    def __init__(self, settings: AgentSettings, name: str) -> None:
        super().__init__(settings, name)
        self.completed = False
        self.failed: str | None = None
        self.tool_calls = 0
        self.rejected: list[str] = []
        self.unreachable_since: float | None = None
        self._now = 0.0

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.session_id = event["thread_id"]
        elif kind == "turn.completed":
            self.completed = True
        elif kind == "turn.failed":
            error = event.get("error")
            self.failed = str(error.get("message") if isinstance(error, dict) else error or "turn failed")
        elif kind == "error":
            message = str(event.get("message", ""))
            if RECONNECTING.search(message):
                if self.unreachable_since is None:
                    self.unreachable_since = self._now
            else:
                self.unreachable_since = None
        elif kind in ("item.started", "item.completed"):
            self.unreachable_since = None  # the model answered
            item = event.get("item")
            item = item if isinstance(item, dict) else {}
            if kind == "item.completed" and item.get("type") in TOOL_ITEMS:
                self.tool_calls += 1
                if self.tool_calls > self.settings.max_turns:
                    self.stop(
                        Stop(
                            f"agent hit its turn limit ({self.settings.max_turns} tool calls)",
                            kind=ErrorKind.AGENT_TURN_LIMIT,
                        )
                    )

    def text(self, line: str) -> None:
        m = REJECTED.search(line)
        if m:
            self.rejected.append(m.group("why").strip()[:200])

    def tick(self, now: float) -> None:
        self._now = now
        if self.unreachable_since is None:
            return
        if self.unreachable_since == 0.0:
            self.unreachable_since = now  # seen before the first tick
        waited = now - self.unreachable_since
        if waited >= self.settings.api_unreachable_seconds:
            self.stop(
                Stop(
                    f"model API unreachable for {waited:.0f} s (Codex keeps reconnecting)",
                    kind=ErrorKind.AGENT_API_ERROR,
                )
            )

    def judge(self, run: PtyRun) -> Verdict:
        if run.error:
            return super().judge(run)
        if self.failed is not None:
            return Verdict(run, False, *_classify(self.failed), session_id=self.session_id)
        if not self.completed:
            verdict = super().judge(run)
            if verdict.ok:
                return Verdict(
                    run,
                    False,
                    "agent ended without turn.completed",
                    ErrorKind.AGENT_EXIT,
                    session_id=self.session_id,
                )
            return verdict
        if self.rejected:
            shown = "; ".join(self.rejected[:3])
            return Verdict(
                run,
                False,
                f"agent's tool call(s) were rejected by its approval policy ({len(self.rejected)}): {shown}",
                ErrorKind.APPROVAL_REQUIRED,
                session_id=self.session_id,
            )
        if run.exit_code != 0:
            return Verdict(
                run,
                False,
                f"agent completed its turn but exited {run.exit_code}",
                ErrorKind.AGENT_EXIT,
                session_id=self.session_id,
            )
        return Verdict(run, True, None, None, session_id=self.session_id)


def _classify(message: str) -> tuple[str, ErrorKind]:
    text = message.strip()[:300]
    low = text.lower()
    if "401" in low or "403" in low or "unauthorized" in low or "forbidden" in low:
        return f"model API refused the credential: {text}", ErrorKind.AGENT_AUTH_FAILED
    if "429" in low or "too many requests" in low or "rate limit" in low:
        return f"model API rate limit: {text}", ErrorKind.AGENT_RATE_LIMITED
    if "missing environment variable" in low or "not logged in" in low or "login" in low:
        return f"agent is not logged in: {text} (set OPENAI_API_KEY)", ErrorKind.AGENT_NOT_LOGGED_IN
    if "stream" in low or "status" in low or "connect" in low:
        return f"model API failed: {text}", ErrorKind.AGENT_API_ERROR
    return f"agent failed: {text}", ErrorKind.AGENT_EXIT


class CodexAgent(StreamAgent):
    """Codex, headless. ``AGENT_COMMAND`` names the executable (default ``codex``)."""

    name = "codex"

    def __init__(self, settings: AgentSettings, sandbox: Sandbox | None = None) -> None:
        exe = shlex.split(settings.command) if settings.command else ["codex"]
        argv = [*exe, *CODEX_FLAGS, *self.provider_args(settings)]
        interactive = shlex.split(settings.interactive_command) if settings.interactive_command else exe
        self.provider = self.provider_args(settings)
        super().__init__(settings, argv, interactive, sandbox)

    @staticmethod
    def provider_args(settings: AgentSettings) -> list[str]:
        """``-c`` overrides for a model provider at ``OPENAI_BASE_URL`` (none without it)."""
        args: list[str] = []
        if settings.codex_model:
            args += ["-c", f"model={quoted_toml(settings.codex_model)}"]
        if not settings.openai_base_url:
            return args
        table = f"model_providers.{PROVIDER}"
        for key, value in (
            ("name", quoted_toml(PROVIDER)),
            ("base_url", quoted_toml(settings.openai_base_url)),
            ("wire_api", '"responses"'),
            ("env_key", '"OPENAI_API_KEY"'),
            ("request_max_retries", str(settings.api_retries)),
            ("stream_max_retries", str(settings.api_retries)),
        ):
            args += ["-c", f"{table}.{key}={value}"]
        return [*args, "-c", f"model_provider={quoted_toml(PROVIDER)}"]

    def rules(self) -> StreamRules:
        return CodexRules(self.settings, self.name)

    def interactive_argv(self, resume: bool, session_id: str | None = None) -> list[str]:
        """``codex resume <id>``: the task's own thread (``agentSessionId``); without one, the
        latest session in this folder, headless ones included (``--last`` alone skips them)."""
        session_id = safe_session_id(session_id)
        words = ["resume", session_id] if session_id else ["resume", "--last", "--include-non-interactive"]
        if "resume_args" in self.settings.model_fields_set:
            words = shlex.split(self.settings.resume_args)
        return [*self.interactive, *self.provider, *(words if resume else [])]

    def child_env(self) -> dict[str, str]:
        env = super().child_env()
        if self.settings.openai_api_key is not None:
            env["OPENAI_API_KEY"] = self.settings.openai_api_key.get_secret_value()
        return env
