"""A Refine session of a Claude Code task resumes the task's exact conversation: the session id the
task's run recorded on its row (``agentSessionId``), with ``claude --resume <id>``, not the latest
conversation in the folder (``--continue``). The real CLI (offline in ``unshare --net``, against the
scripted model server) in the session manager's pty, through the gateway stand-in and a browser."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from ec2_runner.terminal import SessionManager, TaskTarget, TerminalSettings
from ec2_runner.terminal_worktrees import GitCallables
from tests import agent_clis
from tests.integration.refine_support import (
    Browser,
    browser_token,
    running_gateway,
    running_runner,
    workspace,
)
from tests.model_server import ModelServer

WHY_NOT = agent_clis.missing()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or ""),
]
KEY = "sk-scripted"


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    sock = Path(tempfile.mkdtemp(prefix="model-")) / "model.sock"
    with ModelServer(unix_socket=sock) as server:
        yield server
    shutil.rmtree(sock.parent, ignore_errors=True)


def onboarded(home: Path, folder: Path) -> None:
    """What a person does once on a runner before its interactive Claude Code works unattended:
    onboarding done, the API key accepted, the task folders trusted (``CLAUDE_CONFIG_DIR``)."""
    path = home / ".claude.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config["hasCompletedOnboarding"] = True
    config["customApiKeyResponses"] = {"approved": [KEY[-20:]], "rejected": []}
    config.setdefault("projects", {}).setdefault(str(folder), {})["hasTrustDialogAccepted"] = True
    path.write_text(json.dumps(config))


def test_a_refine_session_of_a_claude_task_resumes_the_rows_session_not_the_latest_one(
    moto_endpoint: str, table: str, tmp_path: Path, model: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert model.unix_socket is not None
    home = tmp_path / "claude-home"
    home.mkdir()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{agent_clis.INNER_PORT}")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home))
    agent = make_agent(
        AgentSettings.model_validate(
            {
                "AGENT": "claude",
                "AGENT_COMMAND": agent_clis.offline(agent_clis.CLAUDE, model.unix_socket),
                "ANTHROPIC_API_KEY": KEY,
                "AGENT_ENV_PASSTHROUGH": "ANTHROPIC_BASE_URL,CLAUDE_CONFIG_DIR",
            }
        )
    )
    ws = workspace(tmp_path)
    # given: the task's run in its folder (its session id is what the row records), then a later,
    # other conversation in the same folder: the latest there, which --continue would pick
    ran = ws.checkout("feature/one", "task-T-1")
    task_run = agent.run("the task's own turn [script:clean_edit]", ran.path)
    later = agent.run("a later conversation [script:nochange]", ran.path)
    assert task_run.session_id and later.session_id and task_run.session_id != later.session_id
    folder = ran.path
    ws.remove(ran.path)  # as the pipeline does once the task ended
    onboarded(home, folder)
    row = {"id": "T-1", "branch": "feature/one", "agentSessionId": task_run.session_id}

    def make() -> SessionManager:
        return SessionManager(
            TerminalSettings(resume="auto", show_git_status=False),
            argv_for=agent.interactive_argv,
            git=GitCallables.from_workspace(ws),
            resolve_task=lambda task_id: TaskTarget(row["branch"], row["agentSessionId"]),
            env=agent.child_env(),
        )

    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, make):

        async def scenario() -> str:
            browser = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
            try:
                # when: a Refine browser opens the task and asks the agent what it remembers
                await browser.open(task_id="T-1", timeout=30)
                await browser.wait_text("\u276f", 60)  # Claude Code's prompt
                await browser.type("what did I ask? [script:refine]\r")
                await browser.wait_text("I remember:", 60)
                return browser.text
            finally:
                await browser.close()

        text = asyncio.run(scenario())
    # then: the scripted model was sent the task's own earlier turn, and not the later conversation's
    [resumed] = [r for r in model.seen("refine") if "what did I ask?" in r.prompt]
    assert any("the task's own turn" in t for t in resumed.conversation[:-1]), resumed.conversation
    assert not any("a later conversation" in t for t in resumed.conversation), resumed.conversation
    assert "the task's own turn" in text.replace("\r\n", " ")
