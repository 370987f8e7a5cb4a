"""The agent's login check, run as the runner runs it (the agent's own environment, a real process):
the Kiro adapter asks `kiro-cli whoami` of the same binary its tasks run; a generic command agent
has none unless AGENT_LOGIN_CHECK names one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import CommandAgent
from ec2_runner.kiro import KiroAgent
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO

pytestmark = pytest.mark.integration


def logged_out(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KIRO_HOME", str(home))
    monkeypatch.delenv("KIRO_API_KEY", raising=False)
    subprocess.run([sys.executable, str(FAKE_KIRO), "logout"], check=True, capture_output=True)


def test_kiro_without_a_session_or_key_is_not_logged_in_and_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged_out(tmp_path, monkeypatch)
    status = KiroAgent(AgentSettings(command=FAKE_AGENT_COMMAND)).login_status()
    assert status.logged_in is False and not status.ready
    assert "whoami` exit 1" in status.detail and "KIRO_API_KEY" in status.detail


def test_kiro_with_its_api_key_is_logged_in_and_the_key_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged_out(tmp_path, monkeypatch)
    log = tmp_path / "agent.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    agent = KiroAgent(AgentSettings(command=FAKE_AGENT_COMMAND, kiro_api_key="kiro-key-xyz"))
    status = agent.login_status()
    assert status.logged_in is True and "kiro-key-xyz" not in status.model_dump_json()
    # the check ran the very binary of the tasks' command
    (event,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert event["event"] == "whoami" and event["logged_in"] is True


def test_kiro_that_is_not_installed_is_not_logged_in() -> None:
    status = KiroAgent(AgentSettings(command="kiro-cli-not-installed chat --no-interactive")).login_status()
    assert status.logged_in is False and "not found: kiro-cli-not-installed" in status.detail


def test_a_command_agent_has_no_login_check_unless_one_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged_out(tmp_path, monkeypatch)
    plain = CommandAgent(AgentSettings(agent="command", command=FAKE_AGENT_COMMAND)).login_status()
    assert plain.logged_in is None and plain.ready
    checked = CommandAgent(
        AgentSettings(agent="command", command=FAKE_AGENT_COMMAND, login_check=f"{FAKE_KIRO} whoami")
    ).login_status()
    assert checked.logged_in is False
