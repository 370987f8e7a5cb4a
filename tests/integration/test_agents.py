"""Agent adapters against the fake kiro-cli: a real pty, real processes, every known failure mode.

The fake (tests/fake_agent/kiro-cli) picks its behaviour from ``[fake:...]`` markers in the prompt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from ec2_runner.agent_settings import AgentSettings, agent_env_names
from ec2_runner.agents import CommandAgent, DemoAgent, make_agent
from ec2_runner.headless import AgentResult
from ec2_runner.kiro import KiroAgent
from ec2_runner.ptydriver import TAIL_CHARS
from shared.models import ErrorKind, Task, TaskStatus

pytestmark = pytest.mark.integration

FAKE_DIR = Path(__file__).resolve().parents[1] / "fake_agent"
FAKE = FAKE_DIR / "kiro-cli"
HEADLESS = f"{FAKE} chat --no-interactive --trust-all-tools --wrap never"
API_KEY = "kiro-test-key-7f3a9c2e51d04b68"
PROMPT_RE = r"(?:\x1b\[[0-9;]*m)*> (?:\x1b\[[0-9;]*m)*"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in agent_env_names():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def agent_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake-agent.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(path))
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "worktree"
    d.mkdir()
    return d


def kiro(**overrides: Any) -> KiroAgent:
    values: dict[str, Any] = {"command": HEADLESS, "timeout": 15, "kill_grace": 0.3, "kiro_api_key": API_KEY}
    values.update(overrides)
    return KiroAgent(AgentSettings(**values))


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def alive(pid: int) -> bool:
    """Running, not merely a zombie nobody reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def assert_no_agent_left(log: Path) -> None:
    pids = [e["pid"] for e in events(log)] + [e["helper_pid"] for e in events(log) if "helper_pid" in e]
    assert pids, "the fake agent never started"
    assert not [p for p in pids if alive(p)], "agent processes outlived the run"


def task_prompt(details: str, title: str = "Add login validation") -> str:
    task = Task(
        id="t-1",
        title=title,
        details=details,
        branch="feature/login-validation",
        prNumber=42,
        prUrl="https://example.com/pr/42",
        status=TaskStatus.PENDING,
    )
    return task.prompt()


# ---------------------------------------------------------------- success


def test_success_writes_the_file_and_returns_plain_output(work: Path, agent_log: Path) -> None:
    """A normal turn: the agent writes its file, exits 0, and the output carries no escape codes."""
    chunks: list[str] = []

    result = kiro().run(
        task_prompt("Validate email addresses on the login form."), work, on_output=chunks.append
    )

    assert result.ok, result.error
    assert result.exit_code == 0 and result.error is None and result.attempts == 1
    written = (work / "fake_agent_output.txt").read_text()
    assert "Add login validation" in written and "Validate email addresses" in written
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "Done: wrote fake_agent_output.txt." in result.output
    assert "> I'll work on" in result.output  # the coloured prompt, as plain text
    assert "".join(chunks) == result.output  # streamed as it came, nothing lost
    assert 0 < result.duration < 10
    assert [e["event"] for e in events(agent_log)] == ["start", "end"]
    assert_no_agent_left(agent_log)


def test_output_is_streamed_while_the_agent_works(work: Path) -> None:
    """on_output hears from the agent before it exits, not only at the end."""
    first_seen: list[float] = []
    started = time.monotonic()

    result = kiro().run(
        "Slow task [fake:sleep=1.0]", work, on_output=lambda c: first_seen.append(time.monotonic() - started)
    )

    assert result.ok, result.error
    assert first_seen[0] < result.duration - 0.5


def test_no_change_is_still_a_successful_run(work: Path) -> None:
    """Deciding that 'no changes' is a failure is the runner's job; the agent ran fine."""
    result = kiro().run("Nothing to do [fake:nochange]", work)

    assert result.ok and result.exit_code == 0
    assert not (work / "fake_agent_output.txt").exists()


def test_large_output_keeps_a_bounded_tail(work: Path) -> None:
    """Megabytes of output stream through; only a bounded tail is kept."""
    seen = 0

    def count(chunk: str) -> None:
        nonlocal seen
        seen += len(chunk)

    result = kiro().run("Noisy [fake:big=3000000]", work, on_output=count)

    assert result.ok, result.error
    assert seen >= 3_000_000
    assert len(result.output) <= TAIL_CHARS
    assert "Credits:" in result.output
    print(f"\nagent output throughput: {seen / result.duration / 1e6:.1f} MB/s")


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("marker", "code", "error"),
    [
        ("[fake:exit=1]", 1, "agent failed (exit 1): error: fake failure requested by the prompt (exit 1)"),
        ("[fake:exit=3]", 3, "a required MCP server failed to start (exit 3)"),
        ("[fake:exit=4]", 4, "agent not found (exit 4): check --agent / .kiro/agents"),
        ("[fake:exit=7]", 7, "agent failed (exit 7): error: fake failure requested by the prompt (exit 7)"),
    ],
)
def test_non_zero_exit_is_a_clear_failure(work: Path, marker: str, code: int, error: str) -> None:
    """Kiro's exit codes become readable errors."""
    result = kiro().run(f"Task {marker}", work)

    assert not result.ok
    assert result.exit_code == code
    assert result.error == error


def test_command_agent_reports_exit_codes_generically(work: Path) -> None:
    """A generic command has no Kiro meanings for its exit codes: the last line says what went wrong."""
    agent = CommandAgent(AgentSettings(agent="command", command=HEADLESS, kill_grace=0.3))

    result = agent.run("Task [fake:exit=3]", work)

    assert not result.ok and result.exit_code == 3
    assert (
        result.error
        == "agent failed (exit 3): error: Failed to start required MCP server 'fake-mcp': connection closed"
    )


def test_kiro_rules_apply_to_the_kiro_adapter_only(work: Path) -> None:
    """'Authentication failed.' then exit 0 fails a Kiro run; a generic command printing the same
    words is judged by its exit code alone, and succeeds."""
    generic = CommandAgent(AgentSettings(agent="command", command=HEADLESS, kill_grace=0.3))

    # when
    as_command = generic.run("Task [fake:authfail]", work)
    as_kiro = kiro().run("Task [fake:authfail]", work)

    # then
    assert "Authentication failed." in as_command.output and "Authentication failed." in as_kiro.output
    assert as_command.ok and as_command.exit_code == 0 and as_command.error is None
    assert not as_kiro.ok and as_kiro.exit_code == 0
    assert as_kiro.error == "agent authentication failed (check KIRO_API_KEY)"


def test_a_generic_command_is_not_retried_for_kiros_trouble_message(work: Path, agent_log: Path) -> None:
    """Kiro's one retry on 'having trouble responding' is Kiro's: a generic command runs once and
    fails by its exit code, naming its last line."""
    generic = CommandAgent(AgentSettings(agent="command", command=HEADLESS, kill_grace=0.3))

    result = generic.run("Task [fake:trouble=always]", work)

    assert not result.ok and result.attempts == 1 and result.exit_code == 1
    assert result.error == (
        "agent failed (exit 1): > Kiro is having trouble responding right now. Please try again later."
    )
    assert len([e for e in events(agent_log) if e["event"] == "start"]) == 1


# ---------------------------------------------------------------- hangs, stops, timeouts


def test_hang_is_killed_at_the_timeout_with_nothing_left_running(work: Path, agent_log: Path) -> None:
    """An agent that ignores SIGTERM (and its helper process) is killed as a group at the timeout.
    (2 s: on a loaded machine the fake agent's start-up alone, before its helper, can take one.)"""
    started = time.monotonic()

    result = kiro().run("Stuck [fake:hang]", work, timeout=2.0)

    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.error == "agent timed out after 2 s"
    assert 2.0 <= elapsed < 5.0
    assert any("helper_pid" in e for e in events(agent_log))
    assert_no_agent_left(agent_log)


def test_hang_keeps_what_it_wrote_before_the_timeout(work: Path) -> None:
    """Work done before the hang stays on disk, for the runner's work-in-progress branch."""
    result = kiro().run("Stuck [fake:write path=wip.txt text=partial] [fake:hang]", work, timeout=2.0)

    assert not result.ok and "timed out" in (result.error or "")
    assert (work / "wip.txt").read_text() == "partial\n"


def test_should_stop_stops_the_agent(work: Path, agent_log: Path) -> None:
    """When the runner asks (lease lost, shutdown), the agent is stopped promptly."""
    asked_at: list[float] = []

    def stop_once_started() -> bool:
        # Ask only once the agent is really running: on a loaded machine its start-up alone can take a second.
        if not asked_at and events(agent_log):
            asked_at.append(time.monotonic())
        return bool(asked_at)

    result = kiro().run("Long [fake:sleep=30]", work, should_stop=stop_once_started)

    assert not result.ok
    assert result.error == "agent stopped: stop requested"
    assert time.monotonic() - asked_at[0] < 3.0
    assert_no_agent_left(agent_log)


def test_should_stop_can_give_its_reason(work: Path) -> None:
    """A reason returned by should_stop ends up in the error."""
    result = kiro().run("Long [fake:sleep=30]", work, should_stop=lambda: "lease lost")

    assert result.error == "agent stopped: lease lost"


# ---------------------------------------------------------------- Kiro's traps


def test_device_login_fails_at_once(work: Path, agent_log: Path) -> None:
    """With no credential Kiro waits for a person to log in; the run fails instead of waiting."""
    started = time.monotonic()

    result = kiro(kiro_api_key=None).run("Task [fake:login]", work)

    assert not result.ok
    assert result.error == "agent is not logged in"
    assert time.monotonic() - started < 3.0  # the fake's own start-up; the timeout is 15 s
    assert "Open this URL" in result.output
    assert_no_agent_left(agent_log)


def test_a_url_in_ordinary_output_is_not_a_login(work: Path) -> None:
    """An agent telling the user where to look at their app is not asking to log in."""
    result = kiro().run('Task [fake:say text="Open this URL: http://localhost:3000/ Code: 200 OK"]', work)

    assert result.ok, result.error
    assert "Open this URL: http://localhost:3000/" in result.output


def test_device_login_may_wait_for_the_login_timeout(work: Path) -> None:
    """AGENT_LOGIN_TIMEOUT gives a person time to log in; after it, the run fails the same way."""
    started = time.monotonic()

    result = kiro(login_timeout=1.0).run("Task [fake:login]", work)

    assert result.error == "agent is not logged in"
    assert 1.0 <= time.monotonic() - started < 4.0


def test_authentication_failure_with_exit_zero_is_a_failure(work: Path) -> None:
    """An invalid credential makes Kiro print 'Authentication failed.' and exit 0: not a success."""
    result = kiro().run("Task [fake:authfail]", work)

    assert not result.ok
    assert result.exit_code == 0
    assert result.error == "agent authentication failed (check KIRO_API_KEY)"


def test_approval_question_is_refused_and_names_the_tool(work: Path, agent_log: Path) -> None:
    """A tool-approval question is answered 'n'; the run fails naming the tool; nothing is written."""
    result = kiro().run("Task [fake:approval tool=fs_write]", work)

    assert not result.ok
    assert result.error == (
        "agent asked for approval to use tool 'fs_write'; run with --trust-all-tools or trust the tool"
    )
    assert not (work / "fake_agent_output.txt").exists()
    assert "[y/n/t]:" in result.output
    assert_no_agent_left(agent_log)


def test_approval_is_needed_without_trust_all_tools(work: Path) -> None:
    """Without --trust-all-tools the agent asks before writing, and the adapter refuses."""
    command = f"{FAKE} chat --no-interactive --wrap never"

    result = kiro(command=command).run("Task [fake:write path=src/x.py text=print(1)]", work)

    assert not result.ok and "tool 'fs_write'" in (result.error or "")
    assert not (work / "src" / "x.py").exists()


def test_trouble_responding_is_retried_once(work: Path, agent_log: Path) -> None:
    """'Kiro is having trouble responding' runs the same command again, once."""
    result = kiro().run("Task [fake:trouble]", work)

    assert result.ok, result.error
    assert result.attempts == 2
    assert "having trouble responding" in result.output  # the first attempt is kept in the output
    assert (work / "fake_agent_output.txt").exists()
    assert [e["event"] for e in events(agent_log)] == ["start", "end", "start", "end"]


def test_trouble_responding_with_exit_zero_is_retried_too(work: Path, agent_log: Path) -> None:
    """'Trouble responding' then exit 0 without finishing a turn is no success: it is retried."""
    result = kiro().run("Task [fake:trouble exit=0]", work)

    assert result.ok, result.error
    assert result.attempts == 2
    assert (work / "fake_agent_output.txt").exists()


def test_trouble_responding_twice_fails(work: Path, agent_log: Path) -> None:
    """A second 'trouble responding' is a failure, not another retry."""
    result = kiro().run("Task [fake:trouble=always]", work)

    assert not result.ok
    assert result.attempts == 2
    assert result.error == "agent failed (exit 1): agent is having trouble responding (retried once)"
    assert "error: " not in (result.error or "")
    assert len([e for e in events(agent_log) if e["event"] == "start"]) == 2


def test_missing_executable_is_a_clear_error(work: Path) -> None:
    """A command that is not installed fails at once, saying which and what to set."""
    result = kiro(command="kiro-cli-not-installed chat --no-interactive").run("Task", work)

    assert not result.ok
    assert result.error == "agent command not found: kiro-cli-not-installed (set AGENT_COMMAND)"
    absent = kiro(command=f"{work}/nope chat").run("Task", work)
    assert absent.error == f"agent command not found: {work}/nope (set AGENT_COMMAND)"


# ---------------------------------------------------------------- secrets and environment


def test_api_key_reaches_the_agent_and_is_never_shown(work: Path, caplog: pytest.LogCaptureFixture) -> None:
    """KIRO_API_KEY is in the child's environment; output, errors and logs show it redacted."""
    caplog.set_level(logging.DEBUG)
    chunks: list[str] = []

    ok = kiro().run("Task [fake:leak]", work, on_output=chunks.append)
    failed = kiro().run("Task [fake:leak] [fake:exit=1]", work, on_output=chunks.append)

    assert "KIRO_API_KEY is set" in ok.output
    assert "KIRO_API_KEY=[REDACTED]" in ok.output
    assert failed.error is not None and "[REDACTED]" in failed.error
    for text in (
        ok.output,
        failed.output,
        failed.error,
        "".join(chunks),
        caplog.text,
        repr(ok),
        repr(failed),
    ):
        assert API_KEY not in text
    assert API_KEY not in repr(AgentSettings(kiro_api_key=API_KEY))


def test_without_api_key_the_agent_sees_none(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No configured key means no key in the child, even if one is lying in the runner's env."""
    result = kiro(kiro_api_key=None).run("Task", work)

    assert "KIRO_API_KEY is not set" in result.output


def test_runner_credentials_are_not_inherited(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent runs arbitrary tools: the runner's own secrets stay out of its environment."""
    monkeypatch.setenv("AIPM_VISIBLE", "yes")
    monkeypatch.setenv("RUNNER_SECRET", "runner-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")

    result = kiro().run("Task [fake:env AIPM_VISIBLE RUNNER_SECRET AWS_SECRET_ACCESS_KEY]", work)

    assert "env AIPM_VISIBLE=yes" in result.output
    assert "env RUNNER_SECRET=(unset)" in result.output
    assert "env AWS_SECRET_ACCESS_KEY=(unset)" in result.output


def test_env_passthrough_limits_the_environment(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AGENT_ENV_PASSTHROUGH only the listed names (and the basics) reach the agent."""
    monkeypatch.setenv("AIPM_LISTED", "listed")
    monkeypatch.setenv("AIPM_OTHER", "other")

    result = kiro(env_passthrough=["AIPM_LISTED"]).run("Task [fake:env AIPM_LISTED AIPM_OTHER]", work)

    assert result.ok, result.error
    assert "env AIPM_LISTED=listed" in result.output
    assert "env AIPM_OTHER=(unset)" in result.output


# ---------------------------------------------------------------- demo agent, factory, interactive


def test_demo_agent_records_the_task_and_says_it_is_a_demo(work: Path) -> None:
    """The make-demo stand-in edits TASKS.md from the task and labels itself clearly."""
    agent = make_agent(AgentSettings(agent="demo"))

    result = agent.run(task_prompt("Validate the email field."), work)

    assert isinstance(agent, DemoAgent)
    assert result.ok, result.error
    assert "[DEMO]" in result.output and "stand-in" in result.output
    tasks = (work / "TASKS.md").read_text()
    assert "## Add login validation" in tasks and "Validate the email field." in tasks
    again = agent.run(task_prompt("Validate the email field."), work)
    assert again.ok and (work / "TASKS.md").read_text() != tasks  # a rerun is a change too


def test_make_agent_picks_the_named_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """AGENT names the adapter; auto uses kiro-cli when it is on PATH and the demo otherwise."""
    assert type(make_agent(AgentSettings(agent="kiro"))) is KiroAgent
    assert type(make_agent(AgentSettings(agent="command", command="claude -p"))) is CommandAgent
    assert type(make_agent(AgentSettings(agent="demo"))) is DemoAgent
    monkeypatch.setenv("PATH", "/nonexistent")
    assert type(make_agent(AgentSettings(agent="auto"))) is DemoAgent
    monkeypatch.setenv("PATH", f"{FAKE_DIR}{os.pathsep}/usr/bin:/bin")
    assert type(make_agent(AgentSettings(agent="auto"))) is KiroAgent


@pytest.fixture
def repl(work: Path) -> Iterator[Any]:
    spawned: list[pexpect.spawn] = []

    def start(resume: bool) -> pexpect.spawn:
        argv = kiro().interactive_argv(resume)
        child = pexpect.spawn(
            argv[0], argv[1:], cwd=str(work), encoding="utf-8", timeout=10, dimensions=(24, 80)
        )
        child.delaybeforesend = None
        spawned.append(child)
        return child

    yield start
    for child in spawned:
        child.close(force=True)


def test_interactive_session_echoes_resizes_and_quits(repl: Any) -> None:
    """The Refine command gives a chat with Kiro's prompt that answers, sees resizes and quits."""
    child = repl(resume=False)
    child.expect(PROMPT_RE)

    child.sendline("hello there")
    child.expect("you said: hello there")
    child.expect(PROMPT_RE)
    child.setwinsize(33, 120)
    child.sendline("stty size")
    child.expect(r"33 120")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 0


def test_interactive_resume_continues_the_headless_conversation(work: Path, repl: Any) -> None:
    """After a headless run in a directory, --resume in that directory picks its conversation up."""
    assert kiro().run("Task", work).ok
    assert kiro().interactive_argv(resume=True)[-1] == "--resume"

    child = repl(resume=True)

    child.expect("Resumed the previous conversation")
    child.expect(PROMPT_RE)
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_result_is_a_model(work: Path) -> None:
    """The result crosses into the runner as a validated model."""
    result = kiro().run("Task [fake:nochange]", work)

    assert isinstance(result, AgentResult)
    assert AgentResult.model_validate(result.model_dump()) == result


def test_done_when_the_agent_exits_even_if_a_child_keeps_the_pty(work: Path, tmp_path: Path) -> None:
    """A background process left holding the terminal neither keeps the run going nor survives it."""
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\n(sleep 30; echo late) &\necho started $!\nexit 0\n")
    script.chmod(0o755)
    started = time.monotonic()

    result = CommandAgent(AgentSettings(agent="command", command=str(script), kill_grace=0.3)).run("x", work)

    assert result.ok, result.error
    assert time.monotonic() - started < 3
    helper = int(result.output.split("started ")[1].split()[0])
    assert not alive(helper)


# ---------------------------------------------------------------- failure kinds


@pytest.mark.parametrize(
    ("prompt", "overrides", "kind"),
    [
        ("Task [fake:login]", {"kiro_api_key": None}, ErrorKind.AGENT_NOT_LOGGED_IN),
        ("Task [fake:authfail]", {}, ErrorKind.AGENT_AUTH_FAILED),
        ("Task [fake:approval tool=fs_write]", {}, ErrorKind.APPROVAL_REQUIRED),
        ("Stuck [fake:hang]", {"timeout": 1.0}, ErrorKind.AGENT_TIMEOUT),
        ("Task [fake:exit=1]", {}, ErrorKind.AGENT_EXIT),
        ("Task [fake:exit=3]", {}, ErrorKind.AGENT_EXIT),
        ("Task [fake:trouble=always]", {}, ErrorKind.AGENT_EXIT),
        ("Task", {"command": "kiro-cli-not-installed chat"}, ErrorKind.AGENT_UNAVAILABLE),
    ],
)
def test_each_way_a_kiro_run_fails_has_its_error_kind(
    work: Path, prompt: str, overrides: dict[str, Any], kind: ErrorKind
) -> None:
    """The adapter says what kind of failure a run was, beside its readable error, so the row's
    ``errorKind`` needs no parsing of the text."""
    result = kiro(**overrides).run(prompt, work)

    assert not result.ok and result.error
    assert result.kind is kind


def test_a_generic_command_fails_by_its_exit_kind_alone(work: Path) -> None:
    """A generic command's failure is an exit (Kiro's words mean nothing to it), its timeout a
    timeout, and a run stopped from outside is ``cancelled``; a success has no kind."""
    generic = CommandAgent(AgentSettings(agent="command", command=HEADLESS, kill_grace=0.3))

    assert generic.run("Task [fake:exit=3]", work).kind is ErrorKind.AGENT_EXIT
    assert generic.run("Stuck [fake:hang]", work, timeout=1.0).kind is ErrorKind.AGENT_TIMEOUT
    assert generic.run("Stuck [fake:hang]", work, should_stop=lambda: True).kind is ErrorKind.CANCELLED
    assert generic.run("Task [fake:authfail]", work).kind is None
