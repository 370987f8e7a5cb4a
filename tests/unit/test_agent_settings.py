"""Agent configuration from the environment, and the commands it yields."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from ec2_runner.agent_settings import AgentSettings, agent_env_names
from ec2_runner.agents import CommandAgent, DemoAgent
from ec2_runner.claude_code import ClaudeCodeAgent
from ec2_runner.codex import CodexAgent
from ec2_runner.kiro import KiroAgent

pytestmark = pytest.mark.unit

NAMES = agent_env_names()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_kiro_headless() -> None:
    """With nothing set, the runner drives kiro-cli headless with a 30-minute limit."""
    s = AgentSettings()
    agent = KiroAgent(s)

    assert s.agent == "kiro" and s.timeout == 1800 and s.login_timeout == 0
    assert agent.argv == ["kiro-cli", "chat", "--no-interactive", "--trust-all-tools", "--wrap", "never"]
    assert agent.interactive_argv(resume=False) == ["kiro-cli", "chat", "--wrap", "never"]
    assert agent.interactive_argv(resume=True) == ["kiro-cli", "chat", "--wrap", "never", "--resume"]


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting has its documented environment name."""
    monkeypatch.setenv("AGENT", "Command")
    monkeypatch.setenv("AGENT_COMMAND", "claude -p --output-format 'stream-json'")
    monkeypatch.setenv("AGENT_INTERACTIVE_COMMAND", "claude")
    monkeypatch.setenv("AGENT_RESUME_ARGS", "--continue")
    monkeypatch.setenv("AGENT_TIMEOUT", "60")
    monkeypatch.setenv("AGENT_LOGIN_TIMEOUT", "5")
    monkeypatch.setenv("KIRO_API_KEY", "k-123456")
    monkeypatch.setenv("AGENT_ENV_PASSTHROUGH", "ANTHROPIC_API_KEY, HTTPS_PROXY")

    s = AgentSettings()
    agent = CommandAgent(s)

    assert s.agent == "command" and s.timeout == 60 and s.login_timeout == 5
    assert s.kiro_api_key is not None and s.kiro_api_key.get_secret_value() == "k-123456"
    assert s.env_passthrough == ["ANTHROPIC_API_KEY", "HTTPS_PROXY"]
    assert agent.argv == ["claude", "-p", "--output-format", "stream-json"]
    assert agent.interactive_argv(resume=True) == ["claude", "--continue"]


def test_command_agent_needs_a_command() -> None:
    """AGENT=command without AGENT_COMMAND is refused at start-up."""
    with pytest.raises(ValidationError, match="AGENT_COMMAND"):
        AgentSettings(agent="command")


def test_unparseable_command_is_refused() -> None:
    """An unbalanced quote in AGENT_COMMAND fails validation, not the first task."""
    with pytest.raises(ValidationError, match="not a valid command line"):
        AgentSettings(command="kiro-cli chat 'oops")


def test_unknown_agent_is_refused() -> None:
    with pytest.raises(ValidationError):
        AgentSettings(agent="gpt")


def test_kiro_interactive_command_follows_a_custom_headless_command() -> None:
    """Pointing AGENT_COMMAND at another kiro-cli also moves the Refine session to it."""
    agent = KiroAgent(AgentSettings(command="/opt/kiro/bin/kiro-cli chat --no-interactive --trust-all-tools"))

    assert agent.interactive_argv(resume=False) == ["/opt/kiro/bin/kiro-cli", "chat"]


def test_command_agent_interactive_defaults_to_its_executable() -> None:
    agent = CommandAgent(AgentSettings(agent="command", command="codex exec --json", resume_args=""))

    assert agent.interactive_argv(resume=True) == ["codex"]


def test_demo_agent_runs_the_bundled_stand_in() -> None:
    agent = DemoAgent(AgentSettings(agent="demo"))

    assert agent.argv[0] == sys.executable and agent.argv[1].endswith("demo_agent.py")
    assert "--no-interactive" not in agent.interactive_argv(resume=False)


def test_secret_is_hidden_in_repr() -> None:
    assert "k-123456" not in repr(AgentSettings(kiro_api_key="k-123456"))


def test_prompt_starting_with_a_dash_is_not_an_option() -> None:
    agent = KiroAgent(AgentSettings())

    assert agent._argv_for("--help me")[-1] == " --help me"
    assert agent._argv_for("Task: x")[-1] == "Task: x"


@pytest.mark.parametrize(
    "hostile", ["--dangerously-skip-permissions", "-c", "", "a b", "x" * 200, "id;rm -rf /"]
)
def test_a_row_session_id_that_cannot_be_a_conversation_id_is_never_put_on_the_command_line(
    hostile: str,
) -> None:
    """``agentSessionId`` comes from a row anyone with table access can write: one that is an
    option, empty, spaced or oversized is ignored (the folder's latest conversation instead)."""
    claude = ClaudeCodeAgent(AgentSettings(agent="claude"))
    codex = CodexAgent(AgentSettings(agent="codex"))

    assert claude.interactive_argv(resume=True, session_id=hostile) == ["claude", "--continue"]
    assert codex.interactive_argv(resume=True, session_id=hostile)[-3:] == [
        "resume",
        "--last",
        "--include-non-interactive",
    ]


def test_refine_resumes_the_rows_own_conversation_with_each_clis_resume_flag() -> None:
    """Claude Code: ``claude --resume <id>``; Codex: ``codex resume <id>`` (its interactive
    resume, as ``codex resume --help`` gives it); Kiro names no conversation: ``--resume``, the
    folder's. Not resuming adds nothing."""
    sid = "4b663a73-ebae-4031-9dee-b4667b2ab755"

    assert ClaudeCodeAgent(AgentSettings(agent="claude")).interactive_argv(True, sid) == [
        "claude",
        "--resume",
        sid,
    ]
    assert CodexAgent(AgentSettings(agent="codex")).interactive_argv(True, sid) == ["codex", "resume", sid]
    assert KiroAgent(AgentSettings()).interactive_argv(True, sid)[-1] == "--resume"
    assert ClaudeCodeAgent(AgentSettings(agent="claude")).interactive_argv(False, sid) == ["claude"]


def test_approval_defaults_to_answering_no() -> None:
    """The default stays as before: an approval question is answered no and the run fails."""
    settings = AgentSettings()

    assert (settings.approval, settings.approval_timeout) == ("deny", 900.0)
