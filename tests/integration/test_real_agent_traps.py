"""The traps seen when the real Claude Code and Codex ran on this machine, each through its adapter
(real CLI, real pty, offline in ``unshare --net``) against the scripted model server: a model
server that is not listening, a 401 that the CLI would retry for minutes, a session resumed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from tests import agent_clis
from tests.model_server import ModelServer

WHY_NOT = agent_clis.missing()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or ""),
]


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    sock = Path(tempfile.mkdtemp(prefix="model-")) / "model.sock"
    with ModelServer(unix_socket=sock) as server:
        yield server
    shutil.rmtree(sock.parent, ignore_errors=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path / "wt")], check=True)
    return tmp_path / "wt"


def settings(
    cli: str, sock: Path, home: Path, port: int = agent_clis.INNER_PORT, **extra: object
) -> AgentSettings:
    """The adapter's settings with the CLI offline; ``port`` inside the namespace (another port than
    the bridge's: nothing listens there)."""
    exe = agent_clis.CLAUDE if cli == "claude" else agent_clis.CODEX
    url = f"http://127.0.0.1:{port}"
    values: dict[str, object] = {"AGENT": cli, "AGENT_COMMAND": agent_clis.offline(exe, sock), **extra}
    if cli == "claude":
        values |= {
            "ANTHROPIC_API_KEY": "sk-scripted",
            "AGENT_ENV_PASSTHROUGH": "ANTHROPIC_BASE_URL,CLAUDE_CONFIG_DIR",
        }
    else:
        values |= {"OPENAI_API_KEY": "sk-scripted", "OPENAI_BASE_URL": f"{url}/v1", "CODEX_MODEL": "gpt-5.5"}
    return AgentSettings.model_validate(values), {
        "ANTHROPIC_BASE_URL": url,
        "CLAUDE_CONFIG_DIR": str(home),
        "CODEX_HOME": str(home),
    }


def run(
    cli: str,
    model: ModelServer,
    repo: Path,
    prompt: str,
    monkeypatch: pytest.MonkeyPatch,
    port: int = agent_clis.INNER_PORT,
    **extra: object,
):
    assert model.unix_socket is not None
    home = repo.parent / "cli-home"
    home.mkdir(exist_ok=True)
    chosen, env = settings(cli, model.unix_socket, home, port, **extra)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return make_agent(chosen).run(prompt, repo)


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_model_server_that_is_not_listening_fails_the_run_as_an_api_error_in_bounded_time(
    cli: str, model: ModelServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the model URL: Claude Code gives up after its (bounded) retries; Codex
    would reconnect forever, so the adapter stops it after AGENT_API_UNREACHABLE_SECONDS. Both end
    failed agent_api_error, never as the whole AGENT_TIMEOUT."""
    result = run(
        cli,
        model,
        repo,
        "hello",
        monkeypatch,
        port=agent_clis.INNER_PORT + 1,
        AGENT_API_UNREACHABLE_SECONDS="3",
        AGENT_API_RETRIES="1",
        AGENT_TIMEOUT="90",
    )
    assert not result.ok
    assert result.kind == "agent_api_error", result.error
    assert "unreachable" in (result.error or "") or "connect" in (result.error or "").lower(), result.error


def test_claude_code_a_401_is_retried_only_as_often_as_the_adapter_says(
    model: ModelServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left to itself Claude Code retries a 401 ten times (about 3 minutes); the adapter sets
    CLAUDE_CODE_MAX_RETRIES from AGENT_API_RETRIES, so the model sees that many retries and the run
    fails agent_auth_failed."""
    monkeypatch.delenv("CLAUDE_CODE_MAX_RETRIES", raising=False)
    prompt = "check the key [script:unauthorized] 401-retries"
    result = run("claude", model, repo, prompt, monkeypatch, AGENT_API_RETRIES="1")
    assert (result.ok, result.kind) == (False, "agent_auth_failed"), result.error
    assert 1 <= len([r for r in model.seen("unauthorized") if "401-retries" in r.prompt]) <= 2


def test_claude_code_without_a_key_is_not_logged_in(
    model: ModelServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ANTHROPIC_API_KEY: the CLI ends ``Not logged in`` (exit 1): failed agent_not_logged_in."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert model.unix_socket is not None
    home = repo.parent / "cli-home"
    home.mkdir()
    chosen = AgentSettings.model_validate(
        {"AGENT": "claude", "AGENT_COMMAND": agent_clis.offline(agent_clis.CLAUDE, model.unix_socket)}
    )
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{agent_clis.INNER_PORT}")
    result = make_agent(chosen).run("hello", repo)
    assert (result.ok, result.kind) == (False, "agent_not_logged_in"), result.error


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_resumed_session_sends_the_earlier_turns(
    cli: str, model: ModelServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session id a run reports is the CLI's own: resuming it with the CLI's resume flag sends the
    earlier conversation (the scripted model answers with what it was sent before)."""
    first = run(cli, model, repo, f"first turn of {cli} [script:clean_edit]", monkeypatch)
    assert first.ok and first.session_id, first.error
    agent = make_agent(settings(cli, model.unix_socket, repo.parent / "cli-home")[0])  # type: ignore[arg-type]
    argv = agent.interactive_argv(resume=True, session_id=first.session_id)
    # Refine's terminal resumes that exact conversation (the row's agentSessionId)
    assert argv[-2:] == (["--resume", first.session_id] if cli == "claude" else ["resume", first.session_id])
    # headless resume of that exact session, as Refine's terminal does interactively
    if cli == "claude":
        words = ["-p", "--output-format", "stream-json", "--verbose", "--resume", first.session_id]
    else:
        words = [
            "exec",
            "--json",
            "--dangerously-bypass-approvals-and-sandbox",
            *agent.provider,  # type: ignore[attr-defined]
            "--disable",
            "plugins",
            "--disable",
            "remote_plugin",
            "--disable",
            "apps",
            "resume",
            first.session_id,
        ]
    proc = subprocess.run(
        [
            *agent_clis.offline(
                agent_clis.CLAUDE if cli == "claude" else agent_clis.CODEX, model.unix_socket
            ).split(),
            *words,
            "what did I ask? [script:refine]",
        ],  # type: ignore[arg-type]
        cwd=repo,
        env={**agent.child_env()},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    resumed = [r for r in model.seen("refine") if f"first turn of {cli}" in " ".join(r.conversation)]
    assert resumed, "the resumed session did not send the earlier turns"
