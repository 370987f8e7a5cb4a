"""Settings of a process started by hand in a local stack's folder: `.aipm/local.json` is a settings
source below the environment, used only when the environment names no endpoints, never written
into `os.environ`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from ec2_runner.agents import AgentSettings
from ec2_runner.config import CliSettings, RunnerSettings
from shared.aws import Keys
from shared.config import load_settings, local_stack_in_use

pytestmark = pytest.mark.unit

# the shape `aipm local up` writes (local.stack.LocalStackConfig): endpoints, and the runners' env
LOCAL_ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "local-secret",
    "AWS_SESSION_TOKEN": "local-token",
    "AWS_REGION": "eu-west-1",
    "TABLE_NAME": "aipm-amazon-q-queue",
    "TASK_QUEUE_URL": "http://127.0.0.1:4566/123456789012/aipm-local-tasks",
    "BRANCH_LOCKS_TABLE": "aipm-local-branch-locks",
    "GIT_REMOTE": "/stack/.aipm/remote.git",
    "REPO_PATH": "/stack/.aipm/runners/by-hand/repo",
    "AGENT": "auto",
    "WEBSOCKET_URL": "ws://127.0.0.1:8080/local",
    "RUNNER_SECRET": "runner-secret",
    "TOKEN_SECRET": "token-secret",
    "RUNNER_SLOTS": "3",
    "PROTECTED_BRANCHES": "main,prod/*",
}
NAMES = {*LOCAL_ENV, "WS_URL", "TOKEN_SECRET_ARN", "RUNNER_SECRET_ARN", "AGENT_COMMAND"}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local stack's folder as the working folder, and an environment that names nothing of it."""
    (tmp_path / ".aipm").mkdir()
    (tmp_path / ".aipm" / "local.json").write_text(
        json.dumps({"endpoint_url": LOCAL_ENV["AWS_ENDPOINT_URL"], "region": "eu-west-1", "env": LOCAL_ENV})
    )
    monkeypatch.chdir(tmp_path)
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_runner_started_in_the_folder_takes_the_local_stack_s_settings(folder: Path) -> None:
    """With no endpoint in the environment, every runner setting the file names is used."""
    s = load_settings(RunnerSettings)

    assert local_stack_in_use()
    assert s.aws_endpoint_url == "http://127.0.0.1:4566" and s.aws_region == "eu-west-1"
    assert s.task_queue_url.endswith("/aipm-local-tasks") and s.git_remote == "/stack/.aipm/remote.git"
    assert s.branch_locks_table == "aipm-local-branch-locks"
    assert s.repo_path == Path("/stack/.aipm/runners/by-hand/repo")
    assert s.slots == 3 and s.protected_branches == ["main", "prod/*"]
    assert s.ws_url == "ws://127.0.0.1:8080/local"  # by its other name, as from the environment
    assert s.runner_secret is not None and s.runner_secret.get_secret_value() == "runner-secret"
    # the local stack's dummy keys reach the AWS clients without being exported
    assert s.aws_keys == Keys("testing", "local-secret", "local-token")
    assert load_settings(AgentSettings).agent == "auto"


def test_the_environment_wins_over_the_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable the operator set beats the file's value; the rest still comes from the file."""
    monkeypatch.setenv("RUNNER_SLOTS", "5")
    monkeypatch.setenv("AGENT", "demo")
    monkeypatch.setenv("WS_URL", "ws://elsewhere")

    s = load_settings(RunnerSettings)

    assert s.slots == 5 and s.ws_url == "ws://elsewhere"
    assert s.task_queue_url.endswith("/aipm-local-tasks")
    assert load_settings(AgentSettings).agent == "demo"


@pytest.mark.parametrize("name", ["AWS_ENDPOINT_URL", "TASK_QUEUE_URL"])
def test_an_environment_that_names_an_endpoint_ignores_the_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """An environment pointing at a stack of its own takes nothing from the local stack's file."""
    monkeypatch.setenv(name, "http://own-stack")
    monkeypatch.setenv("GIT_REMOTE", "/own/remote.git")
    monkeypatch.setenv("TASK_QUEUE_URL", "http://own-stack/queue")

    s = load_settings(RunnerSettings)

    assert not local_stack_in_use()
    assert s.task_queue_url == "http://own-stack/queue" and s.git_remote == "/own/remote.git"
    assert s.slots == 2 and s.runner_secret is None and s.ws_url is None and s.aws_keys is None
    assert s.aws_endpoint_url == ("http://own-stack" if name == "AWS_ENDPOINT_URL" else None)


def test_loading_never_writes_the_environment(folder: Path) -> None:
    before = dict(os.environ)

    load_settings(RunnerSettings)
    load_settings(CliSettings)

    assert dict(os.environ) == before


def test_a_model_built_directly_reads_the_environment_only(folder: Path) -> None:
    """Only start-up code opts in: a stray local.json never changes what a library caller gets."""
    with pytest.raises(ValidationError, match="TASK_QUEUE_URL"):
        RunnerSettings()
    assert AgentSettings().agent == "kiro"


def test_operator_commands_find_the_table_and_the_token_secret(folder: Path) -> None:
    s = load_settings(CliSettings)

    assert s.aws_endpoint_url == "http://127.0.0.1:4566" and s.table_name == "aipm-amazon-q-queue"
    assert s.token_secret is not None and s.token_secret.get_secret_value() == "token-secret"
    assert s.ws_url == "ws://127.0.0.1:8080/local"
    assert s.aws_keys == Keys("testing", "local-secret", "local-token")


def test_without_a_file_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)

    s = load_settings(CliSettings)

    assert not local_stack_in_use()
    assert s.aws_endpoint_url is None and s.token_secret is None and s.aws_keys is None
