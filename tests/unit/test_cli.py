"""What ``aipm`` itself says: its version and its help, read as a person reads them."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from ec2_runner import cli
from ec2_runner.cli import main
from ec2_runner.commands import context
from shared import tokens

pytestmark = pytest.mark.unit


def test_version_prints_the_installed_distributions_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"aipm {version('aipm-kiro-runner')}\n"


def test_help_reads_as_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """No reStructuredText markup (``aipm``) from the module's docstring in what a person reads."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: aipm ")
    assert "``" not in text
    assert "aipm: the runner, the local stack, and operator commands" in text
    assert "--version" in text


@pytest.mark.parametrize("branch", ["main", "release/1.2", "MAIN"])
def test_token_refuses_a_read_write_token_for_a_protected_branch(
    branch: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aipm token --branch main`` mints nothing, and says why and what to do instead."""
    monkeypatch.setenv("TOKEN_SECRET", "cli-token-secret-for-tests-0123456789")
    monkeypatch.delenv("PROTECTED_BRANCHES", raising=False)
    context.settings.cache_clear()  # the settings are read once per process
    assert main(["token", "--branch", branch]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "is protected" in err and "no token minted" in err and "--read-only" in err


def test_token_mints_read_only_for_a_protected_branch_and_read_write_elsewhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "cli-token-secret-for-tests-0123456789"
    monkeypatch.setenv("TOKEN_SECRET", secret)
    monkeypatch.setenv("PROTECTED_BRANCHES", "main,trunk")
    context.settings.cache_clear()
    assert main(["token", "--branch", "main", "--read-only"]) == 0
    watcher = tokens.verify(capsys.readouterr().out.strip(), secret)
    assert (watcher.branch, watcher.read_only) == ("main", True)
    assert main(["token", "--branch", "trunk"]) == 2
    capsys.readouterr()
    assert main(["token", "--branch", "feature/x"]) == 0
    writer = tokens.verify(capsys.readouterr().out.strip(), secret)
    assert (writer.branch, writer.read_only) == ("feature/x", False)


def test_terminal_refuses_a_read_write_session_on_a_protected_branch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aipm terminal main`` (a branch, not a task) opens nothing writable there, as ``aipm token``."""
    from shared.store import TaskNotFoundError

    class NoTasks:
        def get(self, task_id: str) -> None:
            raise TaskNotFoundError(task_id)

    monkeypatch.setenv("TOKEN_SECRET", "cli-token-secret-for-tests-0123456789")
    monkeypatch.setenv("WS_URL", "ws://127.0.0.1:9/never-dialled")
    monkeypatch.delenv("PROTECTED_BRANCHES", raising=False)
    monkeypatch.setattr(cli, "_store", lambda: NoTasks())
    context.settings.cache_clear()
    assert main(["terminal", "main"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "is protected" in err and "--read-only" in err
