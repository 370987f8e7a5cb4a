"""The Claude Code adapter (``AGENT=claude``): ``claude -p --output-format stream-json --verbose``.

The run is judged from its last event, ``result {subtype, is_error, api_error_status, result,
session_id, permission_denials}``, and its exit code must agree. Traps it handles, each seen on this
machine: a tool the permission mode denies ends the run with exit 0 and ``is_error: false`` (only
``permission_denials`` shows it); the CLI retries a failed request 10 times by default (a 401 takes
about 3 minutes), so the adapter sets ``CLAUDE_CODE_MAX_RETRIES`` (``AGENT_API_RETRIES``); a missing
key ends ``Not logged in``; a turn limit ends ``error_max_turns``. Telemetry, error reporting and the
auto-updater are off. ``ANTHROPIC_API_KEY`` goes to this CLI only; ``ANTHROPIC_BASE_URL`` is passed
through as any variable.

With ``APPROVAL=escalate`` a tool its permission mode does not allow is not denied but asked about:
``--permission-prompt-tool`` names the runner's MCP tool (:mod:`ec2_runner.approval_prompt`), which
asks ``Allow this action? [y/n]:`` on the run's pty; the rules hand that question to a person.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ec2_runner import approval_prompt
from ec2_runner.agent_settings import AgentSettings
from ec2_runner.headless import Verdict, safe_session_id
from ec2_runner.ptydriver import Ask, PtyRun, Stop
from ec2_runner.sandbox import Sandbox
from ec2_runner.stream_agents import StreamAgent, StreamRules
from shared.models import ErrorKind

CLAUDE_FLAGS = ["-p", "--output-format", "stream-json", "--verbose"]
QUIET_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
APPROVAL_SCRIPT = Path(approval_prompt.__file__).resolve()
PROMPT_TOOL = f"mcp__{approval_prompt.SERVER}__{approval_prompt.TOOL}"
QUESTION = re.compile(r"Using tool: (?P<tool>\S+)[^\n]*\n" + re.escape(approval_prompt.QUESTION))
QUESTION_CHARS = 600


def approval_args() -> list[str]:
    """``--mcp-config`` with the runner's approval tool and ``--permission-prompt-tool`` naming it."""
    server = {"type": "stdio", "command": sys.executable, "args": ["-I", str(APPROVAL_SCRIPT)]}
    config = json.dumps({"mcpServers": {approval_prompt.SERVER: server}})
    return ["--mcp-config", config, "--permission-prompt-tool", PROMPT_TOOL]


class ClaudeRules(StreamRules):
    """Claude Code's events: the session id (``system/init``), the retries, and the final ``result``."""

    def __init__(self, settings: AgentSettings, name: str) -> None:
        super().__init__(settings, name)
        self.result: dict[str, Any] | None = None
        self.retries = 0
        self.asked = 0  # questions handed to a person

    def __call__(self, text: str, now: float) -> Stop | Ask | None:
        """Beside the stream's stops: the approval tool's question, for a person (escalate only)."""
        stop = super().__call__(text, now)
        if stop is not None or self.settings.approval != "escalate":
            return stop
        found = QUESTION.search(text)
        if found is None:
            return None
        self.asked += 1
        tool = found.group("tool")
        return Ask(
            question=found.group(0).strip()[-QUESTION_CHARS:],
            choices=("y", "n"),
            refuse=Stop(f"agent asked for approval to use tool '{tool}'", "n", ErrorKind.APPROVAL_REQUIRED),
            unanswered=f"agent asked for approval to use tool '{tool}' and nobody answered within "
            f"{self.settings.approval_timeout:g} s (APPROVAL_TIMEOUT)",
            timeout=self.settings.approval_timeout,
        )

    def event(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("session_id"), str):
            self.session_id = event["session_id"]
        kind = event.get("type")
        if kind == "result":
            self.result = event
        elif kind == "system" and event.get("subtype") == "api_retry":
            self.retries += 1

    def judge(self, run: PtyRun) -> Verdict:
        result = self.result
        if run.error and run.kind is ErrorKind.APPROVAL_REQUIRED:  # nobody answered: keep the work
            return self._fail(run, run.error, ErrorKind.APPROVAL_REQUIRED, keep=True)
        if run.error or result is None:
            verdict = super().judge(run)
            if verdict.ok:  # exit 0 without a result is no success
                return Verdict(
                    run,
                    False,
                    "agent ended without a result event",
                    ErrorKind.AGENT_EXIT,
                    session_id=self.session_id,
                )
            return verdict
        text = str(result.get("result") or "").strip()[:300]
        status = result.get("api_error_status")
        if result.get("subtype") == "error_max_turns":
            turns = result.get("num_turns")
            return self._fail(
                run, f"agent hit its turn limit ({turns} turns)", ErrorKind.AGENT_TURN_LIMIT, keep=True
            )
        if result.get("is_error") or str(result.get("subtype", "")).startswith("error"):
            if status in (401, 403):
                return self._fail(
                    run, f"model API refused the credential ({status}): {text}", ErrorKind.AGENT_AUTH_FAILED
                )
            if status == 429:
                return self._fail(run, f"model API rate limit (429): {text}", ErrorKind.AGENT_RATE_LIMITED)
            if text.lower().startswith("not logged in"):
                return self._fail(
                    run,
                    f"agent is not logged in: {text} (set ANTHROPIC_API_KEY)",
                    ErrorKind.AGENT_NOT_LOGGED_IN,
                )
            if text.startswith("API Error") or status:
                retried = f" after {self.retries} retries" if self.retries else ""
                return self._fail(run, f"model API failed{retried}: {text}", ErrorKind.AGENT_API_ERROR)
            return self._fail(run, f"agent failed: {text or result.get('subtype')}", ErrorKind.AGENT_EXIT)
        denials = result.get("permission_denials") or []
        if denials and self.asked:
            tools = ", ".join(_denied(d) for d in denials[:5])
            return self._fail(
                run,
                f"a person refused the agent {len(denials)} tool call(s): {tools}",
                ErrorKind.APPROVAL_REQUIRED,
                keep=True,  # as with an unanswered question: the work so far goes to the WIP ref
            )
        if denials:
            tools = ", ".join(_denied(d) for d in denials[:5])
            return self._fail(
                run,
                f"agent was denied {len(denials)} tool call(s) by its permission mode "
                f"({self.settings.claude_permission_mode}): {tools}; allow them with CLAUDE_ALLOWED_TOOLS",
                ErrorKind.APPROVAL_REQUIRED,
            )
        if run.exit_code != 0:
            return self._fail(run, f"agent reported success but exited {run.exit_code}", ErrorKind.AGENT_EXIT)
        return Verdict(run, True, None, None, session_id=self.session_id)

    def _fail(self, run: PtyRun, error: str, kind: ErrorKind, keep: bool = False) -> Verdict:
        return Verdict(run, False, error, kind, session_id=self.session_id, keep_work=keep)


def _denied(denial: Any) -> str:
    if not isinstance(denial, dict):
        return "?"
    name = str(denial.get("tool_name", "?"))
    args = denial.get("tool_input")
    args = args if isinstance(args, dict) else {}
    detail = args.get("command") or args.get("url") or args.get("file_path") or ""
    return f"{name} ({str(detail)[:80]})" if detail else name


class ClaudeCodeAgent(StreamAgent):
    """Claude Code, headless. ``AGENT_COMMAND`` names the executable (default ``claude``; a wrapper
    in front of it also fits); the adapter adds its flags."""

    name = "claude"

    def __init__(self, settings: AgentSettings, sandbox: Sandbox | None = None) -> None:
        exe = shlex.split(settings.command) if settings.command else ["claude"]
        argv = [*exe, *CLAUDE_FLAGS, "--permission-mode", settings.claude_permission_mode]
        argv += ["--max-turns", str(settings.max_turns)]
        if settings.claude_allowed_tools:
            argv += ["--allowedTools", settings.claude_allowed_tools]
        if settings.approval == "escalate":
            argv += approval_args()
        interactive = shlex.split(settings.interactive_command) if settings.interactive_command else exe
        super().__init__(settings, argv, interactive, sandbox)

    def rules(self) -> StreamRules:
        return ClaudeRules(self.settings, self.name)

    def resume_words(self, session_id: str | None = None) -> list[str]:
        """``--resume <id>``: the task's own conversation, the one its run recorded on the row
        (``agentSessionId``); without one, ``--continue``: the latest in this folder, the task's."""
        if "resume_args" in self.settings.model_fields_set:
            return shlex.split(self.settings.resume_args)
        session_id = safe_session_id(session_id)
        return ["--resume", session_id] if session_id else ["--continue"]

    def interactive_argv(self, resume: bool, session_id: str | None = None) -> list[str]:
        return [*self.interactive, *(self.resume_words(session_id) if resume else [])]

    def child_env(self) -> dict[str, str]:
        env = super().child_env()
        env.update(QUIET_ENV)
        env.setdefault("CLAUDE_CODE_MAX_RETRIES", str(self.settings.api_retries))
        if self.settings.anthropic_api_key is not None:
            env["ANTHROPIC_API_KEY"] = self.settings.anthropic_api_key.get_secret_value()
        if self.sandbox is not None and self.sandbox.enabled:
            env["IS_SANDBOX"] = "1"  # the runner's sandbox is the sandbox (lets root use bypass modes)
        return env
