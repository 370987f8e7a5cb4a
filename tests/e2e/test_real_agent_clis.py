"""The real Claude Code and Codex CLIs (tests/agent_clis, pinned) under real runner processes on the
local stack, against the scripted model server (tests/model_server.py): each script ends in the row
and on the remote exactly as the adapter promises. Every CLI runs in a network namespace with
loopback only (``unshare --net``; its one way out is the egress bridge to the model server's unix
socket), or, in the sandboxed case, in the runner's bubblewrap sandbox whose egress proxy allows
only the model server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from tests import agent_clis
from tests.fixtures import AwsCli, unique
from tests.model_server import CLEAN_FILE, EDITED_CONTENT, ModelServer

WHY_NOT = agent_clis.missing()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or ""),
]

# each script, and how the adapter promises the task ends: (status, errorKind)
PROMISES = {
    "clean_edit": ("complete", None),
    "no_changes": ("failed", "no_changes"),
    "unauthorized": ("failed", "agent_auth_failed"),
    "rate_limited": ("complete", None),  # on its second attempt, after the backoff
    "stream_cut": ("failed", "agent_api_error"),
    "turn_limit": ("failed", "agent_turn_limit"),
    "needs_approval": ("failed", "approval_required"),
    "denied_tool": ("failed", "approval_required"),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    sock = Path(tempfile.mkdtemp(prefix="model-")) / "model.sock"
    with ModelServer(unix_socket=sock) as server:
        yield server
    shutil.rmtree(sock.parent, ignore_errors=True)


def cli_env(cli: str, base_url: str, home: Path) -> dict[str, str]:
    """What a runner of ``cli`` needs to reach the scripted model (keys are dummies)."""
    if cli == "claude":
        return {
            "AGENT": "claude",
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-scripted-claude",
            "CLAUDE_CONFIG_DIR": str(home),
        }
    return {
        "AGENT": "codex",
        "OPENAI_BASE_URL": f"{base_url}/v1",
        "OPENAI_API_KEY": "sk-scripted-codex",
        "CODEX_HOME": str(home),
        "CODEX_MODEL": "gpt-5.5",
    }


def start_stack(work: Path, moto_endpoint: str, env: dict[str, str], name: str) -> Any:
    from local.stack import LocalStack

    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique(name),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        log_dir=work / "logs",
        runner_env={
            "AGENT_TIMEOUT": "60",
            "AGENT_KILL_GRACE": "1",
            "AGENT_MAX_TURNS": "5",
            "AGENT_API_RETRIES": "0",
            "RATE_LIMIT_BACKOFF_SECONDS": "1",
            "VISIBILITY_MARGIN_SECONDS": "0",
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "4",
            "LEASE_SECONDS": "60",
            **env,
        },
    )
    stack.start()
    return stack


@pytest.fixture(scope="module", params=["claude", "codex"])
def stack(
    request: pytest.FixtureRequest,
    model: ModelServer,
    moto_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """One stack per CLI, its runner driving that CLI offline (``unshare --net``)."""
    cli = request.param
    work = tmp_path_factory.mktemp(f"real-{cli}")
    exe = agent_clis.CLAUDE if cli == "claude" else agent_clis.CODEX
    assert model.unix_socket is not None
    env = {
        **cli_env(cli, f"http://127.0.0.1:{agent_clis.INNER_PORT}", work / "cli-home"),
        "AGENT_COMMAND": agent_clis.offline(exe, model.unix_socket),
        "AGENT_SANDBOX": "off",
    }
    (work / "cli-home").mkdir()
    stack = start_stack(work, moto_endpoint, env, f"real-{cli}")
    stack.cli_name = cli
    try:
        yield stack
    finally:
        stack.stop()


def awscli(stack: Any) -> AwsCli:
    return AwsCli(stack.config.endpoint_url, stack.config.table_name)


def final(cli: AwsCli, task_id: str, timeout: float = 120) -> dict:
    return cli.ended(task_id, timeout)


def remote_file(stack: Any, ref: str, path: str) -> str | None:
    remote = git.Repo(stack.config.git_remote)
    try:
        return str(remote.git.show(f"{ref}:{path}")) + "\n"
    except git.GitCommandError:
        return None


def remote_has(stack: Any, ref: str) -> bool:
    return bool(git.Repo(stack.config.git_remote).git.for_each_ref(ref))


def test_each_script_ends_as_the_adapter_promises(stack: Any, model: ModelServer) -> None:
    """Every script through the real CLI on a real runner: a clean edit completes with the model's
    file pushed; the 429 completes on its second attempt; every failure is failed with its kind and
    nothing on the task's branch; a turn limit keeps the work on the WIP ref and says so; each row
    carries the CLI's session id."""
    cli = awscli(stack)
    ids = {script: unique(f"{stack.cli_name}-{script.replace('_', '-')}") for script in PROMISES}
    cli.put_tasks(
        [
            {
                "task_id": ids[s],
                "branch": f"feature/{ids[s]}",
                "title": f"Scripted {s}",
                "details": f"Follow the script. [script:{s}]",
            }
            for s in PROMISES
        ]
    )
    rows = {script: final(cli, task_id) for script, task_id in ids.items()}
    for script, (status, kind) in PROMISES.items():
        row, branch = rows[script], f"refs/heads/feature/{ids[script]}"
        assert (row["status"], row.get("errorKind")) == (status, kind), (script, row.get("error"))
        if status == "complete":
            assert remote_file(stack, row["commitSha"], CLEAN_FILE) == EDITED_CONTENT, script
            assert remote_has(stack, branch)
        else:
            assert not remote_has(stack, branch), f"{script}: something was pushed to the task's branch"
        if script != "unauthorized" or stack.cli_name == "codex":
            assert row.get("agentSessionId"), f"{script}: no session id on the row"
    assert int(rows["rate_limited"]["attempts"]) == 2
    assert int(rows["clean_edit"]["attempts"]) == 1
    limited = rows["turn_limit"]
    assert limited["wipRef"] and limited["wipRef"] in limited["error"], limited["error"]
    assert remote_file(stack, f"refs/heads/{limited['wipRef']}", CLEAN_FILE) is not None
    # the model saw each CLI's own tool results: the clean edit's run step read the edited file
    assert len(model.seen("clean_edit", ids["clean_edit"])) >= 4


@pytest.fixture(scope="module")
def sandboxed(
    model: ModelServer, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A runner with the agent sandbox on (bwrap, AGENT_NETWORK=proxy) driving Claude Code: the
    model server's loopback address is the one host the egress proxy allows."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (make venv installs it)")
    work = tmp_path_factory.mktemp("real-sandboxed")
    home = work / "cli-home"
    home.mkdir()
    env = {
        **cli_env("claude", model.url, home),
        "AGENT_COMMAND": str(agent_clis.CLAUDE),
        "AGENT_SANDBOX": "bwrap",
        "AGENT_NETWORK": "proxy",
        "AGENT_ALLOWED_HOSTS": f"127.0.0.1:{model.port}",
        "AGENT_SANDBOX_WRITABLE": str(home),
    }
    stack = start_stack(work, moto_endpoint, env, "real-sbx")
    try:
        yield stack
    finally:
        stack.stop()


def test_claude_code_in_the_sandbox_completes_a_clean_edit_through_the_egress_proxy(
    sandboxed: Any, model: ModelServer
) -> None:
    """Sandboxed (bwrap, network through the allow-list proxy), Claude Code reaches the scripted
    model and the task completes with the model's file pushed."""
    cli = awscli(sandboxed)
    task_id = unique("sbx-claude")
    cli.put_task(task_id, f"feature/{task_id}", title="Scripted clean edit", details="[script:clean_edit]")
    row = final(cli, task_id)
    assert row["status"] == "complete", row.get("error")
    assert remote_file(sandboxed, row["commitSha"], CLEAN_FILE) == EDITED_CONTENT
    assert model.seen("clean_edit", task_id)
