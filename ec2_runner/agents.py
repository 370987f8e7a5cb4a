"""Agent adapters: what the runner needs from an agent, the generic command adapter, and the factory.

Five adapters implement :class:`Agent`: :class:`~ec2_runner.kiro.KiroAgent` (the default, with
Kiro's own failure rules), :class:`~ec2_runner.claude_code.ClaudeCodeAgent` and
:class:`~ec2_runner.codex.CodexAgent` (judged from the CLI's JSON events), :class:`CommandAgent`
(any CLI that takes the prompt as its last
argument, judged by its exit code alone) and :class:`DemoAgent`. ``AGENT=demo`` (or ``auto``
without ``kiro-cli`` on PATH) selects the demo, a clearly labelled stand-in that edits a file from
the task, so ``make demo`` shows a real diff.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.claude_code import ClaudeCodeAgent
from ec2_runner.codex import CodexAgent
from ec2_runner.headless import AgentResult, LoginStatus, PtyAgent
from ec2_runner.kiro import KiroAgent
from ec2_runner.ptydriver import Asker
from ec2_runner.sandbox import Sandbox

logger = logging.getLogger(__name__)

DEMO_AGENT = Path(__file__).with_name("demo_agent.py")


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
        asker: Asker | None = None,
    ) -> AgentResult:
        """Run one task headless in ``cwd`` until the agent exits (or is stopped, or times out); a
        question for a person (``APPROVAL=escalate``) goes to ``asker``."""
        ...

    def interactive_argv(self, resume: bool, session_id: str | None = None) -> list[str]:
        """The command for a Refine terminal session, with the resume args when asked (resuming
        the CLI's own conversation ``session_id`` where the CLI can name one)."""
        ...

    def installed(self) -> str | None:
        """Where the agent's command is, or None when it cannot be run here."""
        ...

    def login_status(self) -> LoginStatus:
        """Whether the agent is logged in (can run a task without a person)."""
        ...


class CommandAgent(PtyAgent):
    """Any agent CLI that takes the prompt as its last argument: ``q chat --no-interactive``,
    ``claude -p``, ``codex exec``, ``aider --message``. Judged by its exit code alone: what it prints
    is its own business (Kiro's failure rules are Kiro's)."""

    name = "command"

    def __init__(self, settings: AgentSettings, sandbox: Sandbox | None = None) -> None:
        if not settings.command:
            raise ValueError("AGENT=command needs AGENT_COMMAND")
        argv = shlex.split(settings.command)
        interactive = shlex.split(settings.interactive_command) if settings.interactive_command else argv[:1]
        super().__init__(settings, argv, interactive, sandbox)


class DemoAgent(PtyAgent):
    """A DEMO STAND-IN for ``make demo`` when ``kiro-cli`` is absent: ``ec2_runner/demo_agent.py``
    writes the task into ``TASKS.md``. It is no coding agent; it only shows the pipeline working."""

    name = "demo"

    def __init__(self, settings: AgentSettings, sandbox: Sandbox | None = None) -> None:
        base = [sys.executable, str(DEMO_AGENT), "chat"]
        headless = [*base, "--no-interactive", "--trust-all-tools", "--wrap", "never"]
        super().__init__(settings, headless, base, sandbox)


def make_agent(settings: AgentSettings, sandbox: Sandbox | None = None) -> Agent:
    """The adapter ``AGENT`` names; ``auto`` picks Kiro when ``kiro-cli`` is on PATH, else the demo.
    With a ``sandbox``, every headless run of it runs inside that sandbox."""
    kind = settings.agent
    if kind == "auto":
        exe = shlex.split(settings.command)[0] if settings.command else "kiro-cli"
        kind = "kiro" if shutil.which(exe) else "demo"
        logger.info(
            "AGENT=auto: %s", f"using {exe}" if kind == "kiro" else f"{exe} not found, using the DEMO agent"
        )
    if kind == "kiro":
        return KiroAgent(settings, sandbox)
    if kind == "claude":
        return ClaudeCodeAgent(settings, sandbox)
    if kind == "codex":
        return CodexAgent(settings, sandbox)
    if kind == "command":
        return CommandAgent(settings, sandbox)
    logger.warning("using the DEMO agent: a stand-in that writes the task into TASKS.md, not a coding agent")
    return DemoAgent(settings, sandbox)
